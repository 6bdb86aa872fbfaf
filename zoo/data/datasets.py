"""The registry of datasets (name -> loader), ``load_dataset``, and ``prepare_data``: the dataset
with the run's fixed splits applied, as a ``DataBundle``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zoo.data.cifar import load_cifar10
from zoo.data.folders import IMAGENETTE_CLASSES, IMAGEWOOF_CLASSES, fastai_loader, load_imagefolder
from zoo.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, load_idx_dataset
from zoo.data.pet import load_oxford_pet
from zoo.data.splits import Splits, load_or_make_splits
from zoo.data.types import DataError, DatasetInfo, ImageSet, Loader


LOADERS: dict[str, Loader] = {
    "fashion-mnist": lambda data_dir, download, image_size=None, seed=0: load_idx_dataset(
        "fashion-mnist", data_dir, download, FASHION_MNIST_CLASSES, image_size),
    "mnist": lambda data_dir, download, image_size=None, seed=0: load_idx_dataset(
        "mnist", data_dir, download, MNIST_CLASSES, image_size),
    "cifar10": load_cifar10,
    "imagenette": fastai_loader("imagenette", IMAGENETTE_CLASSES),
    "imagewoof": fastai_loader("imagewoof", IMAGEWOOF_CLASSES),
    "oxford-pet": load_oxford_pet,
    "imagefolder": load_imagefolder,
}


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True,
                 image_size: int | None = None, *, seed: int = 0
                 ) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """The dataset's own train and test sets plus its ``DatasetInfo``.

    ``image_size`` resizes to a square input (folder datasets default to
    ``DEFAULT_IMAGE_SIZE``; IDX and CIFAR keep their own size unless given); ``seed`` only
    matters for an ImageFolder tree without train/test folders. Nothing is downloaded when
    ``download`` is False.
    """
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, not {image_size}")
    return LOADERS[name](data_dir, download, image_size=image_size, seed=seed)


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
    train_pool, test_set, info = load_dataset(dataset, data_dir, download, image_size, seed=seed)
    splits = load_or_make_splits(run_dir, dataset, len(train_pool), len(test_set), seed,
                                 val_fraction)
    full_fp = splits.fingerprint
    splits = splits.limited(limit_train, limit_eval)
    splits.meta["full_fingerprint"] = full_fp
    return DataBundle(train=train_pool.subset(splits.train), val=train_pool.subset(splits.val),
                      test=test_set.subset(splits.test), info=info, splits=splits)
