"""What the Ray backend (``router.web.ray_backend``) and its deployments
(``router.web.ray_deployments``) share, without importing Ray: the remote-model proxy, the
run's served methods over any model providers, and the HTTP helpers of the ingress.

Kept apart so that the deployments module, which imports Ray and is imported only by
``ray_backend.build_app``, never imports ``ray_backend`` back.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from router.web.images import InputError, Limits
from router.web.methods import ServedMethod, router_method, single_method


class RemoteModel(nn.Module):
    """A zoo model that lives in its own deployment: ``forward`` sends the (preprocessed) batch
    to it and waits. The executor treats it as any module on the CPU."""

    def __init__(self, name: str, handle: Any, timeout_s: float):
        super().__init__()
        self.name, self.handle, self.timeout_s = name, handle, timeout_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.handle.remote(x.detach().cpu()).result(timeout_s=self.timeout_s)


# ---- which models and routers ------------------------------------------------------------

def model_infos(run: str | Path) -> dict[str, Any]:
    """Finished zoo models of the run -> their DatasetInfo (from the cards; nothing loaded)."""
    from zoo.data import DatasetInfo
    from zoo.rundir import RunDir
    rd = RunDir(run)
    out = {}
    for name in rd.finished_models():
        card = rd.read_card(name)
        if card.get("dataset"):
            out[name] = DatasetInfo.from_dict(card["dataset"])
    return out


def load_methods(run: str | Path, providers: dict[str, nn.Module], infos: dict[str, Any],
                 keys: list[str] | None = None) -> dict[str, ServedMethod]:
    """Served methods over ``providers`` (model name -> module, local or ``RemoteModel``):
    ``single:<model>`` for each, ``router:<stem>`` for each artifact of ``RUN/routers`` whose
    models are all provided; only ``keys`` when given."""
    from router.artifact import RoutedClassifier
    run = Path(run)
    by_file = {(run / "zoo" / n / "checkpoint.pt").resolve(): n for n in providers}

    def provide(name: str, checkpoint: Path | None) -> tuple[nn.Module, Any]:
        if checkpoint is None or checkpoint.resolve() not in by_file:
            raise ValueError(f"model {name!r} is not deployed")
        n = by_file[checkpoint.resolve()]
        return providers[n], infos[n]

    methods = {f"single:{n}": single_method(n, m, infos[n]) for n, m in providers.items()}
    hashes: dict[Path, str] = {}
    for f in sorted((run / "routers").glob("*.pt")):
        if keys is not None and f"router:{f.stem}" not in keys:
            continue
        try:
            rc = RoutedClassifier.load(f, run, model_provider=provide, checksums=hashes)
        except Exception:  # an artifact over models not deployed here (or a stale one)
            continue
        rm = router_method(f.stem, rc)
        methods[rm.key] = rm
    if keys is not None:
        methods = {k: m for k, m in methods.items() if k in keys}
    return methods


# ---- HTTP helpers of the ingress -----------------------------------------------------------

def error_response(msg: str, status: int, headers: dict[str, str] | None = None, **extra: Any) -> Any:
    from starlette.responses import JSONResponse
    return JSONResponse({"error": msg, "status": status, **extra}, status_code=status,
                        headers=headers)


def form_file(body: bytes, content_type: str, limits: Limits) -> tuple[bytes, str | None]:
    """The bytes and file name of multipart field ``image`` (parsed as Flask parses it)."""
    from werkzeug.formparser import parse_form_data
    if len(body) > limits.max_bytes + 64 * 1024:
        raise InputError(f"the upload is over the limit of {limits.max_bytes / 2**20:.1f} MB",
                         413)
    environ = {"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
               "CONTENT_TYPE": content_type, "REQUEST_METHOD": "POST"}
    _, _, files = parse_form_data(environ)
    if "image" not in files:
        raise InputError("no file in the form field 'image'; choose a PNG or JPEG file "
                         "(or pass sample=I for a test image)", 400)
    f = files["image"]
    return f.read(limits.max_bytes + 1), f.filename
