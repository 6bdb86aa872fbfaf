"""Datasets behind one interface, held in memory as uint8 tensors, with fixed index splits.

``load_dataset(name, data_dir, download, image_size)`` returns the dataset's own train and test
sets as ``ImageSet`` (uint8 images ``(N, C, H, W)``, int64 labels) plus a ``DatasetInfo``.
Datasets: fashion-mnist, mnist (IDX files), cifar10 (python batches), imagenette, imagewoof
(folder trees, val = test), oxford-pet (cat vs dog), imagefolder (any class-folder tree).
Every decoded picture goes through ``convert_image`` (mode, then shorter side resized and
centre-cropped), and ``load_image_as_input`` applies the very same conversion to one upload.
``load_or_make_splits`` fixes the train/val index lists once per dataset and seed in the run
directory; the test split is the dataset's own test set. ``prepare_data`` ties both together.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

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
        sets.append(ImageSet(_resize_tensor_images(torch.from_numpy(images.copy()).unsqueeze(1),
                                                   image_size),
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


def _channel_stats(images: torch.Tensor, max_samples: int = 10000
                   ) -> tuple[list[float], list[float]]:
    x = images[:max_samples].float() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


# ---- one picture -> model input (shared by every folder dataset and by web uploads) ---------

DEFAULT_IMAGE_SIZE = 64
"""Side of the square input for datasets of large, unequal pictures (ImageNette, ImageWoof,
Oxford-IIIT Pet, ImageFolder trees of mixed sizes) when ``image_size`` is not given."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

ImageSource = str | Path | bytes | bytearray | IO[bytes]


def _open_image(src: ImageSource, size: int | None, mode: str):
    """Open and decode one picture (JPEG decoded at a reduced scale when far larger than needed)."""
    from PIL import Image, ImageOps

    where = "uploaded bytes" if isinstance(src, (bytes, bytearray)) else str(src)
    try:
        img = Image.open(io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray)) else src)
        if size is not None and img.format == "JPEG":
            img.draft(mode, (size, size))  # DCT scaling: result stays >= size on both sides
        img.load()
        img = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise DataError(f"{where} does not exist") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on bad files
        raise _unreadable(where, e) from None
    return img


def _unreadable(where: str | Path, e: Exception) -> DataError:
    return DataError(f"{where} is not a readable image ({type(e).__name__}: {e}); the file is "
                     "corrupt or truncated: replace or remove it, or fetch the dataset again")


def _to_mode(img, mode: str):
    """Convert to ``"L"`` or ``"RGB"``; transparent pixels are laid over white, 16-bit scaled."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        arr = (np.asarray(img, dtype=np.uint16) // 257).astype(np.uint8)
        img = Image.fromarray(arr)  # uint8 (H, W) -> mode L
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img if img.mode == mode else img.convert(mode)


def _resize_square(img, size: int):
    """Shorter side to ``size`` (antialiased bilinear), then the centred ``size x size`` crop."""
    from PIL import Image

    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def convert_image(src: ImageSource, channels: int, size: int) -> np.ndarray:
    """One picture (path, bytes or file) -> uint8 ``(channels, size, size)``.

    Steps, identical for dataset files and uploads: decode (EXIF rotation applied), convert to
    ``L`` (channels=1) or ``RGB`` (channels=3; alpha laid over white), resize the shorter side to
    ``size`` with antialiased bilinear filtering, centre-crop to a square.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    mode = "L" if channels == 1 else "RGB"
    img = _resize_square(_to_mode(_open_image(src, size, mode), mode), size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_image_as_input(path_or_bytes: ImageSource, info: DatasetInfo) -> torch.Tensor:
    """A picture converted the way ``info``'s dataset was: uint8 ``(C, H, W)`` for ``normalize``."""
    return torch.from_numpy(convert_image(path_or_bytes, info.in_channels, info.input_size))


def _resize_tensor_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize a stored uint8 set ``(N, C, H, W)`` with the same PIL steps as ``convert_image``."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    from PIL import Image

    mode = "L" if images.shape[1] == 1 else "RGB"
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    arr = images.numpy()
    for i in tqdm(range(len(arr)), desc=f"resize to {size}", leave=False,
                  disable=len(arr) < 5000):
        pic = arr[i, 0] if mode == "L" else arr[i].transpose(1, 2, 0)
        res = np.asarray(_resize_square(Image.fromarray(np.ascontiguousarray(pic)), size))
        out[i] = res[None] if res.ndim == 2 else res.transpose(2, 0, 1)
    return torch.from_numpy(out)


def decode_images(paths: Sequence[Path], channels: int, size: int,
                  desc: str = "decode") -> torch.Tensor:
    """Decode many pictures into one uint8 ``(N, channels, size, size)`` tensor (tqdm bar)."""
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc, leave=False, disable=len(paths) < 500)):
        out[i] = convert_image(p, channels, size)
    return torch.from_numpy(out)


def _image_info(name: str, classes: list[str], train: ImageSet, source: str) -> DatasetInfo:
    mean, std = _channel_stats(train.images)
    return DatasetInfo(name=name, num_classes=len(classes), in_channels=int(train.images.shape[1]),
                       input_size=int(train.images.shape[-1]), classes=classes, mean=mean,
                       std=std, source=source)


# ---- CIFAR-10 (python batches) ----------------------------------------------------------------

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
        _torchvision_download("cifar10", root, lambda ds: [ds.CIFAR10(str(root), train=t,
                                                                      download=True)
                                                           for t in (True, False)])
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
    train = ImageSet(_resize_tensor_images(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                                           image_size),
                     torch.from_numpy(np.concatenate([p[1] for p in parts])))
    test = ImageSet(_resize_tensor_images(torch.from_numpy(x_te), image_size),
                    torch.from_numpy(y_te))
    return train, test, _image_info("cifar10", classes, train, str(found))


def _torchvision_download(name: str, root: Path, fetch: Callable[[Any], Any]) -> None:
    """Run ``fetch(torchvision.datasets)`` (a real download); any failure becomes a DataError."""
    from torchvision import datasets
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch(datasets)
    except Exception as e:  # no network, a mirror failed, a checksum differed
        raise DataError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}); "
                        "pass --data-dir to a folder holding the data, or --no-download") from None


# ---- folder trees: ImageFolder, ImageNette, ImageWoof ------------------------------------------

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
                gray &= img.mode in _GRAY_MODES
                sizes.add(img.size)
        except Exception as e:
            raise _unreadable(p, e) from None
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
    return train, test, _image_info(name, names, train, source)


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


def _fastai_loader(name: str, class_names: dict[str, str]) -> Loader:
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
                _torchvision_download(name, root, lambda ds: ds.Imagenette(
                    str(root), split="train", size=tv_size, download=True))
            else:
                from torchvision.datasets.utils import download_and_extract_archive
                _torchvision_download(name, root, lambda ds: download_and_extract_archive(
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


# ---- Oxford-IIIT Pet as cat vs dog ------------------------------------------------------------

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
        _torchvision_download("oxford-pet", root, lambda ds: ds.OxfordIIITPet(
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
    return train, test, _image_info("oxford-pet", list(PET_CLASSES), train, str(found))


# ---- the registry of datasets -----------------------------------------------------------------

Loader = Callable[..., tuple[ImageSet, ImageSet, DatasetInfo]]
LOADERS: dict[str, Loader] = {
    "fashion-mnist": lambda data_dir, download, image_size=None, seed=0: load_idx_dataset(
        "fashion-mnist", data_dir, download, FASHION_MNIST_CLASSES, image_size),
    "mnist": lambda data_dir, download, image_size=None, seed=0: load_idx_dataset(
        "mnist", data_dir, download, MNIST_CLASSES, image_size),
    "cifar10": load_cifar10,
    "imagenette": _fastai_loader("imagenette", IMAGENETTE_CLASSES),
    "imagewoof": _fastai_loader("imagewoof", IMAGEWOOF_CLASSES),
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
    train_pool, test_set, info = load_dataset(dataset, data_dir, download, image_size, seed=seed)
    splits = load_or_make_splits(run_dir, dataset, len(train_pool), len(test_set), seed,
                                 val_fraction)
    full_fp = splits.fingerprint
    splits = splits.limited(limit_train, limit_eval)
    splits.meta["full_fingerprint"] = full_fp
    return DataBundle(train=train_pool.subset(splits.train), val=train_pool.subset(splits.val),
                      test=test_set.subset(splits.test), info=info, splits=splits)
