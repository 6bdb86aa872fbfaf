"""Folder trees of pictures: any ImageFolder tree, ImageNette and ImageWoof (val = test)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from zoo.data import fetch
from zoo.data.images import DEFAULT_IMAGE_SIZE, GRAY_MODES, IMAGE_EXTENSIONS, decode_images, \
    unreadable_image
from zoo.data.types import DataError, DatasetInfo, ImageSet, Loader, image_info

IMAGEFOLDER_TEST_FRACTION = 0.2
"""Share of each class held out as the test set when an ImageFolder tree has no train/test."""

IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n03000684": "chain saw",
    "n02979186": "cassette player", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute"}
IMAGEWOOF_CLASSES = {
    "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
    "n02089973": "English foxhound", "n02093754": "Border terrier",
    "n02096294": "Australian terrier", "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog", "n02111889": "Samoyed", "n02115641": "dingo"}
FASTAI_URL = "https://s3.amazonaws.com/fast-ai-imageclas/{stem}.tgz"


def list_image_folder(root: Path, classes: list[str] | None = None
                      ) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of a ``root/<class>/<image>`` tree (sorted, so deterministic).

    With ``classes`` given (a test tree), every class folder must be one of them; a class may
    be absent. An empty class folder is an error either way.
    """
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root} holds no class subfolders; an ImageFolder tree is "
                        f"{root}/<class name>/<image files>")
    if classes is None:
        classes = subdirs
    unknown = [c for c in subdirs if c not in classes]
    if unknown:
        raise DataError(f"{root} has class folders {unknown} that the training tree lacks "
                        f"(training classes: {classes})")
    paths: list[Path] = []
    labels: list[int] = []
    for c in subdirs:
        files = sorted(p for p in (root / c).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"class folder {root / c} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add its pictures")
        paths += files
        labels += [classes.index(c)] * len(files)
    return paths, labels, classes


def _scan_headers(paths: Sequence[Path]) -> tuple[int, set[tuple[int, int]]]:
    """Channel count (1 if every picture is grayscale, else 3) and the set of picture sizes."""
    from PIL import Image
    gray, sizes = True, set()
    for p in paths:
        try:
            with Image.open(p) as img:
                gray &= img.mode in GRAY_MODES
                sizes.add(img.size)
        except Exception as e:
            raise unreadable_image(p, e) from None
    return (1 if gray else 3), sizes


def split_by_seed(labels: Sequence[int], seed: int,
                  test_fraction: float = IMAGEFOLDER_TEST_FRACTION
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test index lists: per class, ``round(n * test_fraction)`` (>= 1 when the
    class has 2+ pictures) go to test, chosen by ``seed``. Same labels + seed -> same split."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(rng.permutation(idx)[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.array([], dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx.astype(np.int64), test_idx.astype(np.int64)


def _folder_sets(name: str, train_dir: Path, test_dir: Path | None, image_size: int | None,
                 seed: int, source: str, channels: int | None = None,
                 class_names: dict[str, str] | None = None
                 ) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """Decode a train tree and a test tree (or split the one tree by ``seed``)."""
    paths, labels, classes = list_image_folder(train_dir)
    if test_dir is not None:
        te_paths, te_labels, _ = list_image_folder(test_dir, classes)
    else:
        tr_idx, te_idx = split_by_seed(labels, seed)
        te_paths, te_labels = [paths[i] for i in te_idx], [labels[i] for i in te_idx]
        paths, labels = [paths[i] for i in tr_idx], [labels[i] for i in tr_idx]
        source += f" (one tree split by seed {seed}, test fraction {IMAGEFOLDER_TEST_FRACTION})"
    if channels is None or image_size is None:
        found_channels, sizes = _scan_headers(paths + te_paths)
        channels = channels or found_channels
        if image_size is None:
            only = next(iter(sizes)) if len(sizes) == 1 else None
            image_size = only[0] if only and only[0] == only[1] else DEFAULT_IMAGE_SIZE
    train = ImageSet(decode_images(paths, channels, image_size, f"{name} train"),
                     torch.tensor(labels, dtype=torch.int64))
    test = ImageSet(decode_images(te_paths, channels, image_size, f"{name} test"),
                    torch.tensor(te_labels, dtype=torch.int64))
    names = [(class_names or {}).get(c, c) for c in classes]
    return train, test, image_info(name, names, train, source)


def load_imagefolder(data_dir: str | Path | None, download: bool = False,
                     image_size: int | None = None, seed: int = 0
                     ) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """Any ``DIR/{train,test}/<class>/<image>`` tree, or one ``DIR/<class>/<image>`` tree split
    into train/test by ``seed``. Grayscale-only trees give 1 channel, anything else RGB; the
    input size is ``image_size``, else the pictures' own size when all share one square size,
    else ``DEFAULT_IMAGE_SIZE``."""
    if data_dir is None:
        raise DataError("--dataset imagefolder needs --data-dir DIR, with DIR/train/<class>/ and "
                        "DIR/test/<class>/ folders of pictures, or DIR/<class>/ folders only")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"ImageFolder root {root} does not exist; point --data-dir at a folder "
                        "holding train/<class>/ and test/<class>/, or <class>/ folders only")
    if (root / "test").is_dir() and not (root / "train").is_dir():
        raise DataError(f"{root} has test/ but no train/; add {root / 'train'} with the class "
                        "folders, or move the class folders up to split by seed")
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise DataError(f"{root} has train/ but no test/; add {root / 'test'} with the same "
                            "class folders, or move the class folders up to split by seed")
        return _folder_sets("imagefolder", root / "train", root / "test", image_size, seed,
                            str(root))
    return _folder_sets("imagefolder", root, None, image_size, seed, str(root))


def fastai_loader(name: str, class_names: dict[str, str]) -> Loader:
    """ImageNette / ImageWoof: ``<root>/<name>2[-160|-320]/{train,val}/<wnid>/``; val is test."""

    def load(data_dir: str | Path | None, download: bool, image_size: int | None = None,
             seed: int = 0) -> tuple[ImageSet, ImageSet, DatasetInfo]:
        size = image_size or DEFAULT_IMAGE_SIZE
        root = Path(data_dir or "data")
        # smallest archive that is still at least as large as the requested input
        stems = [f"{name}2-160", f"{name}2-320", f"{name}2"]
        stems = [s for s, px in zip(stems, (160, 320, 10 ** 9)) if px >= size] + \
                [s for s, px in zip(stems, (160, 320, 10 ** 9)) if px < size]
        candidates = [root] + [root / s for s in stems]
        ok = lambda c: (c / "train").is_dir() and (c / "val").is_dir()  # noqa: E731
        found = next((c for c in candidates if ok(c)), None)
        if found is None and download:
            stem = stems[0]
            if name == "imagenette":
                tv_size = {"imagenette2-160": "160px", "imagenette2-320": "320px"}.get(stem, "full")
                fetch.torchvision_download(name, root, lambda ds: ds.Imagenette(
                    str(root), split="train", size=tv_size, download=True))
            else:
                from torchvision.datasets.utils import download_and_extract_archive
                fetch.torchvision_download(name, root, lambda ds: download_and_extract_archive(
                    FASTAI_URL.format(stem=stem), download_root=str(root)))
            found = next((c for c in candidates if ok(c)), None)
        if found is None:
            raise DataError(f"{name} folders train/ and val/ not found in: "
                            f"{', '.join(map(str, candidates))}. To get them: download "
                            f"{FASTAI_URL.format(stem=stems[0])}, extract it into --data-dir, "
                            "or drop --no-download where a network exists.")
        return _folder_sets(name, found / "train", found / "val", size, seed, str(found),
                            channels=3, class_names=class_names)

    return load
