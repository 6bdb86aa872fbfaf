"""Oxford-IIIT Pet as cat vs dog: train = ``trainval.txt``, test = ``test.txt``."""
from __future__ import annotations

from pathlib import Path

import torch

from zoo.data import fetch
from zoo.data.images import DEFAULT_IMAGE_SIZE, decode_images
from zoo.data.types import DataError, DatasetInfo, ImageSet, image_info


PET_CLASSES = ["cat", "dog"]


def read_pet_annotations(path: Path) -> list[tuple[str, int]]:
    """``(image id, species label)`` from a Pet list file (``ID CLASS SPECIES BREED``; species
    1 = cat, 2 = dog; ``#`` lines are comments)."""
    if not path.exists():
        raise DataError(f"{path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 4 or parts[2] not in ("1", "2"):
            raise DataError(f"{path}:{n}: expected 'IMAGE_ID CLASS SPECIES(1|2) BREED', got "
                            f"{line!r}; fetch the annotations again")
        rows.append((parts[0], int(parts[2]) - 1))
    if not rows:
        raise DataError(f"{path} lists no images; fetch the annotations again")
    return rows


def load_oxford_pet(data_dir: str | Path | None, download: bool, image_size: int | None = None,
                    seed: int = 0) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """Oxford-IIIT Pet, species only: train = ``trainval.txt``, test = ``test.txt``."""
    size = image_size or DEFAULT_IMAGE_SIZE
    root = Path(data_dir or "data")
    candidates = [root / "oxford-iiit-pet", root]
    def ok(c: Path) -> bool:
        return (c / "annotations" / "trainval.txt").exists() and (c / "images").is_dir()

    found = next((c for c in candidates if ok(c)), None)
    if found is None and download:
        fetch.torchvision_download("oxford-pet", root, lambda ds: ds.OxfordIIITPet(
            str(root), split="trainval", download=True))
        found = next((c for c in candidates if ok(c)), None)
    if found is None:
        raise DataError("Oxford-IIIT Pet (annotations/trainval.txt, annotations/test.txt, "
                        f"images/) not found in: {', '.join(map(str, candidates))}. To get it: "
                        "download images.tar.gz and annotations.tar.gz from "
                        "https://www.robots.ox.ac.uk/~vgg/data/pets/, extract both into "
                        "--data-dir/oxford-iiit-pet/, or drop --no-download where a network "
                        "exists.")
    sets = []
    for split in ("trainval", "test"):
        rows = read_pet_annotations(found / "annotations" / f"{split}.txt")
        paths = [found / "images" / f"{image_id}.jpg" for image_id, _ in rows]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise DataError(f"{len(missing)} images listed in {split}.txt are missing, e.g. "
                            f"{missing[0]}; extract images.tar.gz into {found}")
        sets.append(ImageSet(decode_images(paths, 3, size, f"oxford-pet {split}"),
                             torch.tensor([lbl for _, lbl in rows], dtype=torch.int64)))
    train, test = sets
    return train, test, image_info("oxford-pet", list(PET_CLASSES), train, str(found))
