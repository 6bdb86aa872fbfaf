"""Datasets behind one interface, held in memory as uint8 tensors, with fixed index splits.

``load_dataset(name, data_dir, download)`` returns the dataset's own train and test sets as
``ImageSet`` (uint8 images ``(N, C, H, W)``, int64 labels). ``load_or_make_splits`` fixes the
train/val index lists once per dataset and seed in the run directory; the test split is the
dataset's own test set. ``prepare_data`` ties both together for every script.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from oracle.io import read_json, write_json

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]


class DataError(RuntimeError):
    """Missing or corrupt data; the message names the path looked at and how to get the data."""


@dataclass
class DatasetInfo:
    """What a model needs to know about its inputs (stored in every checkpoint card)."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetInfo":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class ImageSet:
    """Images as uint8 ``(N, C, H, W)`` with int64 labels ``(N,)`` and sample ids ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.ids is None:
            self.ids = torch.arange(len(self.labels))
        if not (len(self.images) == len(self.labels) == len(self.ids)):
            raise ValueError("images, labels and ids differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray | torch.Tensor) -> "ImageSet":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.ids[idx])


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> float32 standardised by the dataset's mean and std."""
    x = images.float().div_(255.0)
    mean = torch.tensor(info.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


# ---- readers ----------------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) as a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path} cannot be read ({e}); the file is missing or corrupt: "
                        "delete it and fetch the dataset again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file; fetch the dataset again")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != expected:
        raise DataError(f"{path} is truncated: header says {dims} ({expected} bytes), file "
                        f"holds {len(raw) - offset}; delete it and fetch the dataset again")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if all((d / f"{stem}.gz").exists() or (d / stem).exists()
               for pair in IDX_FILES.values() for stem in pair):
            return d
    return None


def _idx_file(d: Path, stem: str) -> Path:
    return d / f"{stem}.gz" if (d / f"{stem}.gz").exists() else d / stem


def load_idx_dataset(name: str, data_dir: str | Path | None, download: bool,
                     classes: list[str]) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """Fashion-MNIST or MNIST from IDX files: ``data_dir``, the Debian package, or torchvision."""
    candidates: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir)
        tv_name = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
        candidates += [d, d / name, d / tv_name / "raw"]
    if name == "fashion-mnist":
        candidates.append(DEBIAN_FASHION_MNIST)
    found = _find_idx_dir(candidates)
    if found is None and download:
        found = _torchvision_download_idx(name, Path(data_dir or "data"))
    if found is None:
        looked = ", ".join(str(c) for c in candidates) or "(no --data-dir given)"
        hint = ("install the Debian package (`apt-get install dataset-fashion-mnist`), "
                if name == "fashion-mnist" else "")
        raise DataError(f"{name} IDX files (train-images-idx3-ubyte[.gz] ...) not found in: "
                        f"{looked}. To get them: {hint}pass --data-dir to a folder holding them, "
                        "or drop --no-download where a network exists.")
    sets = []
    for split, (img_stem, lbl_stem) in IDX_FILES.items():
        images = read_idx(_idx_file(found, img_stem))
        labels = read_idx(_idx_file(found, lbl_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{found}: {split} images {images.shape} and labels {labels.shape} "
                            "do not match; fetch the dataset again")
        sets.append(ImageSet(torch.from_numpy(images.copy()).unsqueeze(1),
                             torch.from_numpy(labels.astype(np.int64))))
    train, test = sets
    mean, std = _channel_stats(train.images)
    info = DatasetInfo(name=name, num_classes=len(classes), in_channels=1,
                       input_size=int(train.images.shape[-1]), classes=classes,
                       mean=mean, std=std, source=str(found))
    return train, test, info


def _torchvision_download_idx(name: str, root: Path) -> Path | None:
    """Download through torchvision (only where a network exists); return the raw folder."""
    from torchvision import datasets
    cls = datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # no network, or a mirror failed
        raise DataError(f"downloading {name} into {root} failed ({e}); pass --data-dir to a "
                        "folder holding the IDX files") from None
    return _find_idx_dir([root / cls.__name__ / "raw"])


def _channel_stats(images: torch.Tensor, max_samples: int = 10000) -> tuple[list[float], list[float]]:
    x = images[:max_samples].float() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


Loader = Callable[..., tuple[ImageSet, ImageSet, DatasetInfo]]
LOADERS: dict[str, Loader] = {
    "fashion-mnist": lambda data_dir, download, image_size=None: load_idx_dataset(
        "fashion-mnist", data_dir, download, FASHION_MNIST_CLASSES),
    "mnist": lambda data_dir, download, image_size=None: load_idx_dataset(
        "mnist", data_dir, download, MNIST_CLASSES),
}


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True,
                 image_size: int | None = None) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """The dataset's own train and test sets plus its ``DatasetInfo``."""
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    return LOADERS[name](data_dir, download, image_size=image_size)


# ---- fixed splits ------------------------------------------------------------------------

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


@dataclass
class DataBundle:
    """The three splits in memory plus what describes them."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    info: DatasetInfo
    splits: Splits

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, name)


def prepare_data(run_dir: str | Path, dataset: str = "fashion-mnist",
                 data_dir: str | Path | None = None, seed: int = 0,
                 limit_train: int | None = None, limit_eval: int | None = None,
                 download: bool = True, image_size: int | None = None,
                 val_fraction: float = 0.1) -> DataBundle:
    """Load the dataset, fix (or reuse) the run's splits, apply limits, return all three."""
    train_pool, test_set, info = load_dataset(dataset, data_dir, download, image_size)
    splits = load_or_make_splits(run_dir, dataset, len(train_pool), len(test_set), seed,
                                 val_fraction)
    full_fp = splits.fingerprint
    splits = splits.limited(limit_train, limit_eval)
    splits.meta["full_fingerprint"] = full_fp
    return DataBundle(train=train_pool.subset(splits.train), val=train_pool.subset(splits.val),
                      test=test_set.subset(splits.test), info=info, splits=splits)
