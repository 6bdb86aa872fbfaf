"""Fashion-MNIST and MNIST from IDX files (the Debian package, ``--data-dir``, or torchvision)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from zoo.data.images import resize_tensor_images
from zoo.data.types import DataError, DatasetInfo, ImageSet, channel_stats


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]


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
                     classes: list[str], image_size: int | None = None
                     ) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """Fashion-MNIST or MNIST from IDX files: ``data_dir`` (when given, only there), else the
    Debian package; or torchvision's download where allowed."""
    candidates: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir)
        tv_name = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
        candidates += [d, d / name, d / tv_name / "raw"]
    elif name == "fashion-mnist":
        # an explicit --data-dir is authoritative: a wrong folder is an error, not a silent
        # fall-back to the system copy
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
        sets.append(ImageSet(resize_tensor_images(torch.from_numpy(images.copy()).unsqueeze(1),
                                                  image_size),
                             torch.from_numpy(labels.astype(np.int64))))
    train, test = sets
    mean, std = channel_stats(train.images)
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
