"""Fixed index splits: train/val index lists made once per dataset and seed and saved in the run
directory (``RUN/splits/<dataset>-seed<seed>.json``); the test split is the dataset's own test set."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.io import read_json, write_json
from zoo.data.types import DataError


@dataclass
class Splits:
    """Index lists into the dataset's train set (train, val) and test set (test)."""

    dataset: str
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Short hash of the three index lists: tables and checkpoints record it."""
        h = hashlib.sha256()
        for name in ("train", "val", "test"):
            h.update(name.encode())
            h.update(np.asarray(getattr(self, name), dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def limited(self, limit_train: int | None, limit_eval: int | None) -> "Splits":
        """First N indices of each split (deterministic), for presets and tests."""
        cut = lambda a, n: a[:n] if n else a  # noqa: E731
        return Splits(self.dataset, self.seed, cut(self.train, limit_train),
                      cut(self.val, limit_eval), cut(self.test, limit_eval), dict(self.meta))


def make_splits(dataset: str, n_train_pool: int, n_test: int, seed: int,
                val_fraction: float = 0.1) -> Splits:
    """Shuffle the train pool with ``seed`` and hold out ``val_fraction`` of it for validation."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_train_pool)
    n_val = int(round(n_train_pool * val_fraction))
    return Splits(dataset, seed, np.sort(perm[n_val:]), np.sort(perm[:n_val]),
                  np.arange(n_test), {"val_fraction": val_fraction,
                                      "n_train_pool": n_train_pool, "n_test": n_test})


def splits_path(run_dir: str | Path, dataset: str, seed: int) -> Path:
    return Path(run_dir) / "splits" / f"{dataset}-seed{seed}.json"


def load_or_make_splits(run_dir: str | Path, dataset: str, n_train_pool: int, n_test: int,
                        seed: int, val_fraction: float = 0.1) -> Splits:
    """Read the run's saved splits, or make and save them once; refuse a changed dataset size."""
    path = splits_path(run_dir, dataset, seed)
    if path.exists():
        d = read_json(path)
        s = Splits(d["dataset"], d["seed"], np.array(d["train"], dtype=np.int64),
                   np.array(d["val"], dtype=np.int64), np.array(d["test"], dtype=np.int64),
                   d.get("meta", {}))
        if s.meta.get("n_train_pool") != n_train_pool or s.meta.get("n_test") != n_test:
            raise DataError(f"{path} was made for a dataset of {s.meta.get('n_train_pool')} train "
                            f"/ {s.meta.get('n_test')} test images but this one has "
                            f"{n_train_pool} / {n_test}; use a new --run directory")
        return s
    s = make_splits(dataset, n_train_pool, n_test, seed, val_fraction)
    write_json(path, {"dataset": s.dataset, "seed": s.seed, "fingerprint": s.fingerprint,
                      "meta": s.meta, "train": s.train.tolist(), "val": s.val.tolist(),
                      "test": s.test.tolist()})
    return s
