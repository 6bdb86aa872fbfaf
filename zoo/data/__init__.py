"""Datasets behind one interface, held in memory as uint8 tensors, with fixed index splits.

``load_dataset(name, data_dir, download, image_size)`` returns the dataset's own train and test
sets as ``ImageSet`` (uint8 images ``(N, C, H, W)``, int64 labels) plus a ``DatasetInfo``.
Datasets: fashion-mnist, mnist (IDX files), cifar10 (python batches), imagenette, imagewoof
(folder trees, val = test), oxford-pet (cat vs dog), imagefolder (any class-folder tree).
Every decoded picture goes through ``convert_image`` (mode, then shorter side resized and
centre-cropped), and ``load_image_as_input`` applies the very same conversion to one upload.
``load_or_make_splits`` fixes the train/val index lists once per dataset and seed in the run
directory; the test split is the dataset's own test set. ``prepare_data`` ties both together.

One module per concern: ``types`` (DatasetInfo, ImageSet, DataError, normalize), ``images``
(picture decoding), ``idx`` (Fashion-MNIST, MNIST), ``cifar``, ``folders`` (ImageFolder,
ImageNette, ImageWoof), ``pet`` (Oxford-IIIT Pet), ``fetch`` (torchvision downloads),
``splits``, and ``datasets`` (the registry of loaders, ``load_dataset``, ``prepare_data``).
This package re-exports their public names.
"""
from zoo.data.cifar import CIFAR10_CLASSES, CIFAR10_TEST_BATCH, CIFAR10_TRAIN_BATCHES, \
    load_cifar10, read_cifar_batch
from zoo.data.datasets import LOADERS, DataBundle, load_dataset, prepare_data
from zoo.data.folders import FASTAI_URL, IMAGEFOLDER_TEST_FRACTION, IMAGENETTE_CLASSES, \
    IMAGEWOOF_CLASSES, list_image_folder, load_imagefolder, split_by_seed
from zoo.data.idx import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES, IDX_FILES, MNIST_CLASSES, \
    load_idx_dataset, read_idx
from zoo.data.images import DEFAULT_IMAGE_SIZE, IMAGE_EXTENSIONS, ImageSource, convert_image, \
    decode_images, load_image_as_input
from zoo.data.pet import PET_CLASSES, load_oxford_pet, read_pet_annotations
from zoo.data.splits import Splits, load_or_make_splits, make_splits, splits_path
from zoo.data.types import DataError, DatasetInfo, ImageSet, Loader, normalize

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_TEST_BATCH", "CIFAR10_TRAIN_BATCHES", "DEBIAN_FASHION_MNIST",
    "DEFAULT_IMAGE_SIZE", "FASHION_MNIST_CLASSES", "FASTAI_URL", "IDX_FILES", "IMAGE_EXTENSIONS",
    "IMAGEFOLDER_TEST_FRACTION", "IMAGENETTE_CLASSES", "IMAGEWOOF_CLASSES", "LOADERS",
    "MNIST_CLASSES", "PET_CLASSES", "DataBundle", "DataError", "DatasetInfo", "ImageSet",
    "ImageSource", "Loader", "Splits", "convert_image", "decode_images", "list_image_folder",
    "load_cifar10", "load_dataset", "load_idx_dataset", "load_image_as_input",
    "load_imagefolder", "load_or_make_splits", "load_oxford_pet", "make_splits", "normalize",
    "prepare_data", "read_cifar_batch", "read_idx", "read_pet_annotations", "split_by_seed",
    "splits_path",
]
