"""A routed classifier as one file: router settings and weights + the zoo models it may call.

On disk (``torch.save``, read back with ``weights_only=True``): ``{format, kind, name,
model_names, models: [{name, checkpoint, checkpoint_abs, sha256, embedded?}], router: {...},
info, meta}``. The dispatcher's own (small) weights are always inside. Zoo model weights are
either referenced (default: checkpoint path relative to the run directory, plus the absolute
path as written, and its SHA-256, checked on load so a changed checkpoint is refused instead
of silently used) or, with ``save(..., embed=True)``, copied in: the whole checkpoint dict of
every model the router can choose, so the one file is all a user needs (the zoo's tiny VGGs
weigh about 26 MB each, which is why embedding is not the default for the per-level files
evaluate-routers writes). A library member without a checkpoint is embedded by its spec
(``Member.torchvision``: arch and state dict) or, a module of the user's own, as TorchScript
bytes (a uint8 tensor of ``torch.jit.save``'s output), so no user class is needed to load it.

``RoutedClassifier.load(path)`` gives a callable: uint8 images in -> ``RoutedOutput`` with
predictions, chosen models, each answer's confidence and the scores behind each choice. A
process that already holds the zoo (the web page) passes ``model_provider=`` so the router calls
its models instead of loading second copies of them.
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from router.api_inputs import check_batch
from router.base import AssignmentRouter, Router, RouterError
from router.execute import execute_routed
from router.kinds import ROUTER_KINDS, kind_of
from zoo.checkpoint import atomic_torch_save, build_from_arch, file_sha256, load_model, \
    load_torch_file, preprocess_of, read_checkpoint
from zoo.data import DatasetInfo
from zoo.device import device_of
from zoo.preprocess import Preprocess, PreprocessLike, prepare

FORMAT = "adaptive-router-routed/1"
# (model name, resolved checkpoint path) -> (the loaded model, its DatasetInfo or None for the
# artifact's); raises for a model it cannot supply.
# A member saved without a checkpoint or rebuildable spec (a module of the user's own) gets
# ``checkpoint=None``; it may return a ``zoo.preprocess`` preprocessing instead of an info.
ModelProvider = Callable[[str, Path | None], tuple[nn.Module, PreprocessLike | None]]


@dataclass
class RoutedOutput:
    """Answers for N images and why each model was chosen."""

    preds: np.ndarray                 # (N,) predicted class
    chosen: np.ndarray                # (N,) index into model_names of the answering model
    model_names: list[str]
    confidence: np.ndarray            # (N,) top softmax probability of the answering model
    scores: np.ndarray | None = None  # (N, K) numbers behind the choice (NaN: not computed)
    score_names: list[str] = field(default_factory=list)
    rule: str = ""

    @property
    def chosen_names(self) -> list[str]:
        return [self.model_names[i] for i in self.chosen]


class RoutedClassifier:
    """A router plus the zoo models it routes to, callable on uint8 images."""

    def __init__(self, name: str, router: Router, models: Sequence[nn.Module | None],
                 infos: Sequence[PreprocessLike | None], checkpoints: Sequence[str | Path | None],
                 batch_size: int = 256, meta: dict[str, Any] | None = None,
                 info: DatasetInfo | None = None):
        """``infos``: each model's preprocessing (this project's ``DatasetInfo``, a
        ``zoo.preprocess.Preprocess`` or a callable); ``info``: what the classifier takes
        (channels, size, classes; default: the first model's ``DatasetInfo``)."""
        self.name, self.router = name, router
        self.source_info = info
        self.model_names = list(router.model_names)
        if not (len(models) == len(infos) == len(checkpoints) == len(self.model_names)):
            raise RouterError("models, infos and checkpoints must be given for every model name "
                              "(None for models the router never chooses)")
        self.models, self.infos = list(models), list(infos)
        self.checkpoints = [None if c is None else Path(c) for c in checkpoints]
        self.batch_size, self.meta = batch_size, dict(meta or {})
        self.embedded: dict[int, dict[str, Any]] = {}   # model index -> checkpoint read from file
        if router.runs_models:
            # a cascade routes by running its models: bind them to this classifier's own
            # shallow copy, never to the fitted router (another classifier built from the same
            # fit keeps its own models and batch size)
            self.router = copy.copy(router)
            self.router.attach(self.models, self.infos, batch_size)

    def __call__(self, images: torch.Tensor | np.ndarray) -> RoutedOutput:
        x = _as_images(images, self._info(), self.meta.get("input_shape"))
        if self.router.runs_models:                  # routing = running the stages
            res = self.router.run(x)
            routing = self.router.routing_of(res)
        else:
            routing = self.router.explain(x)
            missing = sorted({self.model_names[m] for m in np.unique(routing.chosen)
                              if self.models[m] is None})
            if missing:
                raise RouterError(f"the router chose models {missing} that this artifact did not load")
            res = execute_routed(AssignmentRouter(self.model_names, routing.chosen), x,
                                 self.models, self.infos, self.batch_size)
        return RoutedOutput(res.preds, res.chosen, self.model_names, res.confidence,
                            routing.scores, routing.score_names, routing.rule)

    def _info(self) -> DatasetInfo | None:
        if self.source_info is not None:
            return self.source_info
        return next((i for i in self.infos if isinstance(i, DatasetInfo)), None)

    @property
    def info(self) -> DatasetInfo | None:
        """What the classifier takes: channels, input size, class names (of its first model)."""
        return self._info()

    def _spec(self, i: int) -> dict[str, Any] | None:
        """How to rebuild model ``i`` without a checkpoint (``meta["specs"]``, set by the
        library API for torchvision members), as an arch dict for ``build_from_arch``."""
        specs = self.meta.get("specs") or []
        spec = specs[i] if i < len(specs) else None
        if not spec or "torchvision" not in spec:
            return None
        from zoo.torchvision_models import torchvision_arch_dict
        return torchvision_arch_dict(spec["torchvision"], spec["num_classes"],
                                     **(spec.get("kwargs") or {}))

    def _input_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) the classifier takes: recorded at fit (``meta``), else its info's."""
        shape = self.meta.get("input_shape")
        if shape is not None:
            return tuple(int(v) for v in shape)  # type: ignore[return-value]
        info = self._info()
        return None if info is None else (info.in_channels, info.input_size, info.input_size)

    # ---- persistence ------------------------------------------------------------------
    def save(self, path: str | Path, run_root: str | Path | None = None,
             embed: bool = False) -> Path:
        """Write the artifact atomically; checkpoint paths are stored relative to ``run_root``.

        ``embed``: copy the checkpoint of every model the router can choose into the file, so
        it loads anywhere without the run directory. A model without a checkpoint is stored by
        its spec (``Member.torchvision``: arch + state dict) or, a module of the user's own, as
        TorchScript (``torch.jit.script``, else ``torch.jit.trace`` on one image of the
        recorded input shape; the bytes of ``torch.jit.save`` as a uint8 tensor), so the file
        loads without the user's class; one that can be neither scripted nor traced cleanly
        is refused with the reason (save without ``embed`` and load with ``model_provider=``).
        """
        path = Path(path)
        run_root = Path(run_root) if run_root is not None else path.parent.parent
        needed = _needed_models(self.router, len(self.model_names))
        models = []
        for i, (name, ckpt) in enumerate(zip(self.model_names, self.checkpoints)):
            if ckpt is None and i in self.embedded:      # loaded from an embedded artifact
                models.append({"name": name, "checkpoint": "", "checkpoint_abs": "", "sha256": "",
                               "preprocess": _preprocess_payload(self.infos[i]),
                               "embedded": self.embedded[i]})
                continue
            if ckpt is None:
                entry = {"name": name, "checkpoint": "", "checkpoint_abs": "", "sha256": "",
                         "preprocess": _preprocess_payload(self.infos[i])}
                spec = self._spec(i)
                if embed and i in needed:
                    if entry["preprocess"] is None:
                        raise RouterError(
                            f"cannot embed model {name!r}: its preprocessing is a callable, which "
                            "an artifact cannot store; give it a zoo.preprocess.Preprocess, or "
                            "save without embed= and load with model_provider=")
                    if spec is not None:
                        entry["embedded"] = {"arch": spec, "state_dict": {
                            k: v.detach().cpu() for k, v in self.models[i].state_dict().items()}}
                    else:                                # a module of the user's own
                        entry["embedded"] = {"torchscript": _torchscript_bytes(
                            name, self.models[i], self.infos[i], self._input_shape())}
                models.append(entry)
                continue
            rel = os.path.relpath(ckpt.resolve(), run_root.resolve())
            entry = {"name": name, "checkpoint": rel, "checkpoint_abs": str(ckpt.resolve()),
                     "sha256": file_sha256(ckpt)}
            if embed and i in needed:
                entry["embedded"] = read_checkpoint(ckpt)
            models.append(entry)
        info = self._info()
        payload = {"format": FORMAT, "name": self.name, "model_names": self.model_names,
                   "models": models, "router": _router_payload(self.router),
                   "info": None if info is None else info.to_dict(),
                   "batch_size": self.batch_size, "meta": self.meta}
        payload["kind"] = payload["router"]["kind"]
        return atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | Path, run_root: str | Path | None = None,
             verify: bool = True, *, model_provider: ModelProvider | None = None,
             checksums: dict[Path, str] | None = None) -> "RoutedClassifier":
        """Rebuild the router and load the zoo models it may choose (checksums verified).

        ``model_provider(name, checkpoint)`` supplies each model referenced by checkpoint
        instead of loading it again: a server that already holds the zoo passes its own model
        objects, so a router adds only its own small weights (its SHA-256 is still checked
        against the artifact's). Embedded models are built from the artifact either way.
        ``checksums`` caches each checkpoint's SHA-256 (by resolved path) across loads, so
        many artifacts over one zoo read each file once.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"routed classifier {path} does not exist; run "
                                    "`evaluate-routers --run DIR` to write RUN/routers/*.pt")
        d = load_torch_file(path, FORMAT, what="routed-classifier artifact",
                            fix="re-run `evaluate-routers --run DIR` to write it again")
        run_root = Path(run_root) if run_root is not None else path.parent.parent
        info = DatasetInfo.from_dict(d["info"]) if d.get("info") else None
        router = _router_from_payload(d["router"], d["model_names"], info)
        needed = _needed_models(router, len(d["model_names"]))
        models, infos, ckpts, embedded = [], [], [], {}
        for i, entry in enumerate(d["models"]):
            if i not in needed:
                models.append(None), infos.append(None), ckpts.append(None)
                continue
            if entry.get("embedded") is not None:
                c = entry["embedded"]
                if "torchscript" in c:                  # a module of the user's own
                    model = torch.jit.load(io.BytesIO(c["torchscript"].numpy().tobytes()),
                                           map_location="cpu")
                else:
                    model = build_from_arch(c["arch"])
                    model.load_state_dict(c["state_dict"])
                model.eval()
                ckpt, embedded[i] = None, c
                minfo = preprocess_of(c) or _preprocess_from(entry.get("preprocess"))
            elif not entry["checkpoint"]:           # a module of the user's own
                if model_provider is None:
                    raise RouterError(f"model {entry['name']!r} was saved without a checkpoint "
                                      "or embedded weights: pass model_provider= to load it")
                model, minfo = model_provider(entry["name"], None)
                minfo = minfo if minfo is not None else _preprocess_from(entry.get("preprocess"))
                ckpt = None
            else:
                ckpt = _resolve(entry, run_root)
                if model_provider is not None:
                    ckpt = ckpt.resolve()
                    model, minfo = model_provider(entry["name"], ckpt)
                if verify and entry["sha256"] and _sha256(ckpt, checksums) != entry["sha256"]:
                    raise ValueError(f"checkpoint {ckpt} of model {entry['name']!r} changed since "
                                     "the router was saved (sha256 differs); re-run "
                                     "`evaluate-routers`")
                if model_provider is None:
                    model, c = load_model(ckpt)
                    minfo = preprocess_of(c)
            models.append(model)
            infos.append(minfo if minfo is not None else info)
            ckpts.append(ckpt)
        clf = cls(d["name"], router, models, infos, ckpts, int(d.get("batch_size", 256)),
                  d.get("meta"), info=info)
        clf.embedded = embedded
        return clf


def _torchscript_bytes(name: str, model: nn.Module, how: PreprocessLike | None,
                      shape: Sequence[int] | None) -> torch.Tensor:
    """``model`` as TorchScript (scripted, else traced on one mid-grey image of ``shape``
    through its preprocessing ``how``), the bytes of ``torch.jit.save`` as a uint8 tensor (what
    ``torch.load(..., weights_only=True)`` reads back); refused with each attempt's reason."""
    reasons = []
    module: torch.jit.ScriptModule | None = None
    if isinstance(model, torch.jit.ScriptModule):     # Member.torchscript: already TorchScript
        module = model
    else:
        try:
            module = torch.jit.script(model)
        except Exception as e:                       # noqa: BLE001 - reported below
            reasons.append(f"torch.jit.script: {_first_line(e)}")
    if module is None and shape is None:
        reasons.append("torch.jit.trace: no recorded input shape to trace with (build the "
                       "classifier with routed_classifier(..., data=val))")
    elif module is None:
        example = prepare(torch.full((1, *[int(v) for v in shape]), 128, dtype=torch.uint8,
                                     device=device_of(model)), how)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with torch.no_grad():
                    module = torch.jit.trace(model, example)
            except Exception as e:                   # noqa: BLE001 - reported below
                reasons.append(f"torch.jit.trace: {_first_line(e)}")
        unsafe = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        if module is not None and unsafe:            # the trace may not hold for other inputs
            module = None
            reasons.append(f"torch.jit.trace: {_first_line(unsafe[0].message)}")
    if module is None:
        raise RouterError(f"cannot embed model {name!r}: it can be neither scripted nor traced "
                          f"({'; '.join(reasons)}); save without embed= and load with "
                          "model_provider=, or make the module scriptable")
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _first_line(e: Any) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 240 else line[:237] + "..."


def _as_images(images: torch.Tensor | np.ndarray, info: DatasetInfo | None,
               shape: Sequence[int] | None = None) -> torch.Tensor:
    """A uint8 (N, C, H, W) batch of the shape the classifier was fitted on (the recorded
    ``meta["input_shape"]``, else its ``DatasetInfo``'s), else a ``RouterError`` naming the
    problem (dtype, channel-last layout, channels, size) and the fix."""
    if shape is None and info is not None:
        shape = (info.in_channels, info.input_size, info.input_size)
    return check_batch(images, shape)


def _preprocess_payload(how: Any) -> dict[str, Any] | None:
    if isinstance(how, Preprocess):
        return {"type": "preprocess", **how.to_dict()}
    if isinstance(how, DatasetInfo):
        return {"type": "dataset-info", **how.to_dict()}
    return None                              # a callable: the provider supplies it again


def _preprocess_from(d: dict[str, Any] | None) -> PreprocessLike | None:
    if not d:
        return None
    d = dict(d)
    kind = d.pop("type")
    return Preprocess.from_dict(d) if kind == "preprocess" else DatasetInfo.from_dict(d)


def _router_payload(router: Router) -> dict[str, Any]:
    """The router's kind (``router.kinds``) and that kind's state of it."""
    kind = kind_of(router)
    return {"kind": kind.name, **kind.state(router)}


def _router_from_payload(r: dict[str, Any], names: list[str], info: DatasetInfo) -> Router:
    name = r["kind"]
    if name == "dispatcher":              # artifacts written before the kind table
        name = f"dispatcher-{r['mode']}"
    if name not in ROUTER_KINDS:
        raise ValueError(f"unknown router kind {r['kind']!r} in artifact; this version knows "
                         f"{tuple(ROUTER_KINDS)}")
    return ROUTER_KINDS[name].from_state(r, names, info)


def _needed_models(router: Router, n: int) -> set[int]:
    return kind_of(router).needed_models(router, n)


def _sha256(path: Path, cache: dict[Path, str] | None) -> str:
    """``file_sha256(path)``, read once per resolved path when a ``cache`` is given."""
    if cache is None:
        return file_sha256(path)
    key = path.resolve()
    if key not in cache:
        cache[key] = file_sha256(key)
    return cache[key]


def _resolve(entry: dict[str, str], run_root: Path) -> Path:
    for cand in (run_root / entry["checkpoint"], Path(entry["checkpoint_abs"])):
        if entry["checkpoint"] and cand.exists():
            return cand
    raise FileNotFoundError(f"checkpoint of model {entry['name']!r} not found at "
                            f"{run_root / entry['checkpoint']} or {entry['checkpoint_abs']}; "
                            "load the artifact from inside its run directory or pass run_root=")
