"""CIFAR-10 from its python batches, read with an unpickler that builds numpy arrays only."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.data import fetch
from zoo.data.images import resize_tensor_images
from zoo.data.types import DataError, DatasetInfo, ImageSet, image_info


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST_BATCH = "test_batch"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers, and refuses everything else."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are "
                                     "allowed in a CIFAR batch)")


def read_cifar_batch(path: str | Path) -> dict[str, Any]:
    """Read one CIFAR python batch with the restricted unpickler; keys decoded to ``str``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except Exception as e:
        raise DataError(f"{path} is not a readable CIFAR batch ({type(e).__name__}: {e}); the "
                        "file is corrupt or truncated: delete it and fetch the dataset again"
                        ) from None
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, not a CIFAR batch dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = read_cifar_batch(path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path} lacks the 'data' array or the 'labels' list of a CIFAR-10 batch")
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
            or len(data) != len(labels):
        raise DataError(f"{path}: data {data.dtype} {data.shape} and {len(labels)} labels are not "
                        "a CIFAR-10 batch (uint8 (N, 3072)); fetch the dataset again")
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise DataError(f"{path}: labels outside 0..9; fetch the dataset again")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str | Path | None, download: bool, image_size: int | None = None,
                 seed: int = 0) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """CIFAR-10 from ``cifar-10-batches-py/`` (in ``data_dir`` or ``data_dir`` itself)."""
    root = Path(data_dir or "data")
    candidates = [root / "cifar-10-batches-py", root]
    needed = CIFAR10_TRAIN_BATCHES + [CIFAR10_TEST_BATCH]
    found = next((c for c in candidates if all((c / f).exists() for f in needed)), None)
    if found is None and download:
        fetch.torchvision_download("cifar10", root, lambda ds: [
            ds.CIFAR10(str(root), train=t, download=True) for t in (True, False)])
        found = next((c for c in candidates if all((c / f).exists() for f in needed)), None)
    if found is None:
        raise DataError(f"cifar10 python batches ({', '.join(needed)}) not found in: "
                        f"{', '.join(map(str, candidates))}. To get them: download "
                        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extract it into "
                        "--data-dir (giving DIR/cifar-10-batches-py/), or drop --no-download where "
                        "a network exists.")
    parts = [_cifar_arrays(found / f) for f in CIFAR10_TRAIN_BATCHES]
    x_te, y_te = _cifar_arrays(found / CIFAR10_TEST_BATCH)
    classes = list(CIFAR10_CLASSES)
    if (found / "batches.meta").exists():
        names = read_cifar_batch(found / "batches.meta").get("label_names")
        if names and len(names) == 10:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = ImageSet(resize_tensor_images(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                                          image_size),
                     torch.from_numpy(np.concatenate([p[1] for p in parts])))
    test = ImageSet(resize_tensor_images(torch.from_numpy(x_te), image_size),
                    torch.from_numpy(y_te))
    return train, test, image_info("cifar10", classes, train, str(found))
