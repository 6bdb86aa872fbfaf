"""Shared fixtures: small synthetic datasets written in the real on-disk formats."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the MNIST / Fashion-MNIST format)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def synthetic_images(n: int, num_classes: int = 10, size: int = 28, channels: int = 1,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: class k lights a bar at a class-specific place, plus noise.

    Returns images ``(n, size, size)`` (or ``(n, size, size, channels)``) uint8 and labels ``(n,)``.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, size, size, channels)).astype(np.float32)
    band = max(2, size // num_classes)
    for i, k in enumerate(labels):
        start = (k * size) // num_classes
        if k % 2 == 0:
            images[i, start:start + band, :, :] += 180
        else:
            images[i, :, start:start + band, :] += 180
    images = np.clip(images, 0, 255).astype(np.uint8)
    if channels == 1:
        images = images[..., 0]
    return images, labels.astype(np.uint8)


def make_fake_idx_dataset(root: Path, n_train: int = 400, n_test: int = 100,
                          size: int = 28, seed: int = 0) -> Path:
    """A folder of Fashion-MNIST-format files (gzipped IDX) with synthetic learnable images."""
    root.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr = synthetic_images(n_train, size=size, seed=seed)
    x_te, y_te = synthetic_images(n_test, size=size, seed=seed + 1)
    write_idx(root / "train-images-idx3-ubyte.gz", x_tr)
    write_idx(root / "train-labels-idx1-ubyte.gz", y_tr)
    write_idx(root / "t10k-images-idx3-ubyte.gz", x_te)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", y_te)
    return root


@pytest.fixture(scope="session")
def fake_fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session-wide synthetic Fashion-MNIST folder: 400 train and 100 test 28x28 images."""
    return make_fake_idx_dataset(tmp_path_factory.mktemp("fake-fmnist"))
