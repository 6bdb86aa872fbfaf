"""PredictionTable and CostTable: the numpy artifacts every later step works from.

``PredictionTable`` holds one split's predictions of every model (models sorted by cost):
``model_names (M,)``, ``labels (N,)``, ``preds (N, M)``, ``probs (N, M, C)`` float16,
``sample_ids (N,)``. Correctness is derived, never stored. On disk: ``<split>.npz`` with exactly
those five keys, plus ``<split>.json`` with ``split`` and metadata (dataset, split fingerprint,
checkpoint hashes, created).

``CostTable`` holds measured per-model costs plus the machine they were measured on.

Numpy only, no torch: zoo writes these tables, oracle, router and reports read them.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write, read_json, write_json

NPZ_KEYS = ("model_names", "labels", "preds", "probs", "sample_ids")


class TableMismatchError(ValueError):
    """Raised when tables (or a table and the run's checkpoints) do not describe the same thing."""


@dataclass
class PredictionTable:
    """Predictions of M models on the N samples of one split."""

    model_names: list[str]
    labels: np.ndarray           # (N,) int64
    preds: np.ndarray            # (N, M) int64
    probs: np.ndarray            # (N, M, C) float16
    sample_ids: np.ndarray       # (N,) int64, indices into the dataset split
    split: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model_names = [str(m) for m in self.model_names]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.preds = np.asarray(self.preds, dtype=np.int64)
        self.probs = np.asarray(self.probs, dtype=np.float16)
        self.sample_ids = np.asarray(self.sample_ids, dtype=np.int64)
        n, m = len(self.labels), len(self.model_names)
        if self.preds.shape != (n, m):
            raise ValueError(f"preds has shape {self.preds.shape}, expected (N={n}, M={m})")
        if self.probs.ndim != 3 or self.probs.shape[:2] != (n, m):
            raise ValueError(f"probs has shape {self.probs.shape}, expected (N={n}, M={m}, C)")
        if self.sample_ids.shape != (n,):
            raise ValueError(f"sample_ids has shape {self.sample_ids.shape}, expected ({n},)")
        if len(set(self.model_names)) != m:
            raise ValueError(f"duplicate model names in {self.model_names}")

    # ---- derived views -------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return len(self.labels)

    @property
    def n_models(self) -> int:
        return len(self.model_names)

    @property
    def n_classes(self) -> int:
        return int(self.probs.shape[2])

    @property
    def correct(self) -> np.ndarray:
        """(N, M) bool: model m is right on sample n."""
        return self.preds == self.labels[:, None]

    @property
    def confidence(self) -> np.ndarray:
        """(N, M) float32: top softmax probability of each model."""
        return self.probs.astype(np.float32).max(axis=2)

    def accuracy(self) -> np.ndarray:
        """(M,) top-1 accuracy of each model."""
        return self.correct.mean(axis=0)

    def model_index(self, name: str) -> int:
        try:
            return self.model_names.index(name)
        except ValueError:
            raise KeyError(f"model {name!r} is not in the table ({self.model_names})") from None

    def select_models(self, names: list[str]) -> "PredictionTable":
        """A table restricted (and reordered) to ``names``."""
        idx = [self.model_index(n) for n in names]
        return PredictionTable(list(names), self.labels, self.preds[:, idx], self.probs[:, idx],
                               self.sample_ids, self.split, dict(self.meta))

    # ---- persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``<dir>/<split>.npz`` and ``<dir>/<split>.json`` atomically."""
        directory = Path(directory)
        arrays = {"model_names": np.array(self.model_names), "labels": self.labels,
                  "preds": self.preds, "probs": self.probs, "sample_ids": self.sample_ids}

        def write(p: Path) -> None:
            with p.open("wb") as f:
                np.savez_compressed(f, **arrays)
        npz = atomic_write(directory / f"{self.split}.npz", write)
        meta = {"split": self.split, "model_names": self.model_names,
                "created": self.meta.get("created") or _now(), **self.meta}
        write_json(directory / f"{self.split}.json", meta)
        return npz

    @classmethod
    def load(cls, directory: str | Path, split: str) -> "PredictionTable":
        """Read ``<dir>/<split>.npz`` (+ ``.json``) with errors that name the file."""
        directory = Path(directory)
        npz_path = directory / f"{split}.npz"
        if not npz_path.exists():
            raise FileNotFoundError(f"prediction table {npz_path} does not exist; run "
                                    "`profile-zoo --run DIR` first")
        with np.load(npz_path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise ValueError(f"{npz_path} lacks keys {missing}; re-run `profile-zoo`")
            arrays = {k: z[k] for k in NPZ_KEYS}
        json_path = directory / f"{split}.json"
        meta = read_json(json_path) if json_path.exists() else {}
        meta.pop("split", None)
        meta.pop("model_names", None)
        return cls(model_names=[str(m) for m in arrays["model_names"]], labels=arrays["labels"],
                   preds=arrays["preds"], probs=arrays["probs"],
                   sample_ids=arrays["sample_ids"], split=split, meta=meta)

    def check_compatible(self, other: "PredictionTable") -> None:
        """Refuse to combine tables from different models, datasets or checkpoints."""
        if self.model_names != other.model_names:
            raise TableMismatchError(
                f"tables {self.split!r} and {other.split!r} have different models: "
                f"{self.model_names} vs {other.model_names}; re-run `profile-zoo`")
        for key in ("dataset", "checkpoint_hashes"):
            a, b = self.meta.get(key), other.meta.get(key)
            if a is not None and b is not None and a != b:
                raise TableMismatchError(
                    f"tables {self.split!r} and {other.split!r} differ in {key}: {a} vs {b}; "
                    "re-run `profile-zoo` so both come from the same checkpoints")


@dataclass
class ModelCost:
    """Measured cost of one model on one machine."""

    name: str
    params: int
    nonzero_params: int
    macs: int                       # multiply-accumulates for one input image
    size_mb: float                  # size of the saved checkpoint file
    latency_ms_b1: float            # median latency at batch 1
    images_per_second: float        # throughput at the large batch below
    throughput_batch: int = 256
    peak_memory_mb: float = 0.0     # memory added by inference at that batch
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ms_per_image(self) -> float:
        """Batched cost per image in ms (what routed execution pays)."""
        return 1000.0 / self.images_per_second if self.images_per_second > 0 else float("inf")


@dataclass
class CostTable:
    """Per-model costs with the machine, thread count and torch version they were measured on."""

    models: dict[str, ModelCost]
    machine: dict[str, Any] = field(default_factory=dict)  # cpu, threads, torch, device, created

    def __getitem__(self, name: str) -> ModelCost:
        if name not in self.models:
            raise KeyError(f"no measured cost for model {name!r}; run `profile-zoo` "
                           f"(have: {sorted(self.models)})")
        return self.models[name]

    def sorted_names(self, key: str = "ms_per_image") -> list[str]:
        """Model names from cheapest to most expensive (ties broken by MACs, then name)."""
        return sorted(self.models, key=lambda n: (getattr(self.models[n], key),
                                                  self.models[n].macs, n))

    def vector(self, names: list[str], key: str = "ms_per_image") -> np.ndarray:
        """(M,) float64 of one cost field for ``names`` in that order."""
        return np.array([float(getattr(self[n], key)) for n in names], dtype=np.float64)

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"machine": self.machine,
                                 "models": {n: asdict(c) for n, c in self.models.items()}})

    @classmethod
    def load(cls, path: str | Path) -> "CostTable":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"cost table {path} does not exist; run "
                                    "`profile-zoo --run DIR` first")
        d = read_json(path)
        return cls(models={n: ModelCost(**c) for n, c in d["models"].items()},
                   machine=d.get("machine", {}))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
