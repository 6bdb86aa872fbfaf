"""Self-describing checkpoints: state dict + architecture description, never pickled modules.

A checkpoint is a dict ``{format, model_name, arch, state_dict, parent, metrics, train_config,
data}`` saved with ``torch.save`` and read with ``torch.load(weights_only=True)``. ``arch`` is
JSON-able; ``arch["kind"]`` picks the builder from the architecture table in
``zoo.arch_kinds`` (plain VGGs and the compressed variants; ``register_arch_kind`` adds others).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.io import atomic_write
from zoo.arch_kinds import build_from_arch, register_arch_kind
from zoo.data import DatasetInfo
from zoo.preprocess import Preprocess, PreprocessLike

__all__ = ["FORMAT", "atomic_torch_save", "build_from_arch", "file_sha256", "load_model",
           "load_torch_file", "preprocess_of", "read_checkpoint", "register_arch_kind",
           "save_checkpoint"]

FORMAT = "adaptive-router-checkpoint/1"


def save_checkpoint(path: str | Path, *, model_name: str, arch: dict[str, Any],
                    state_dict: dict[str, Any], parent: str | None = None,
                    metrics: dict[str, Any] | None = None,
                    train_config: dict[str, Any] | None = None,
                    data: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = OrderedDict((k, v.detach().cpu() if torch.is_tensor(v) else v)
                        for k, v in state_dict.items())
    if getattr(state_dict, "_metadata", None) is not None:
        # keep per-module versions: quantized modules need them to read their own state
        state._metadata = state_dict._metadata  # type: ignore[attr-defined]
    payload = {"format": FORMAT, "model_name": model_name, "arch": arch,
               "state_dict": state,
               "parent": parent, "metrics": metrics or {}, "train_config": train_config or {},
               "data": data or {}, "extra": extra or {}}
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half a file."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch_file(path: str | Path, fmt: str, *, what: str, fix: str) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a dict whose ``"format"`` is ``fmt``.

    A truncated, foreign or wrong-format file is a ``ValueError`` naming ``what`` the file
    should have been and ``fix``, what to do about it.
    """
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{what} {path} cannot be read ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(d, dict) or d.get("format") != fmt:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{path} is not a {what} (format {found!r}, expected {fmt!r}); {fix}")
    return d


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; run `train-zoo` (or "
                                "`compress`) for this model first")
    return load_torch_file(path, FORMAT, what="adaptive-router checkpoint",
                           fix="delete it and re-run the step that wrote it")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its arch, load the weights, return ``(model.eval(), checkpoint)``."""
    ckpt = read_checkpoint(path)
    model = build_from_arch(ckpt["arch"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (used to tie tables to the checkpoints they came from)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def preprocess_of(ckpt: dict[str, Any], default: DatasetInfo | None = None) -> PreprocessLike | None:
    """How a checkpoint's model prepares its inputs: its own ``Preprocess`` (a model added with
    ``add-model``: ``extra["preprocess"]``), else the dataset normalisation it was trained with
    (``data``), else ``default``."""
    extra = ckpt.get("extra") or {}
    if extra.get("preprocess"):
        return Preprocess.from_dict(extra["preprocess"])
    if ckpt.get("data"):
        return DatasetInfo.from_dict(ckpt["data"])
    return default
