"""One picture -> model input, shared by every folder dataset and by web uploads.

``convert_image`` decodes a picture (EXIF rotation applied), converts it to ``L`` or ``RGB``,
resizes the shorter side and centre-crops; ``load_image_as_input`` applies the very same steps
to one upload; ``resize_tensor_images`` resizes a stored uint8 set the same way.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.data.types import DataError, DatasetInfo


DEFAULT_IMAGE_SIZE = 64
"""Side of the square input for datasets of large, unequal pictures (ImageNette, ImageWoof,
Oxford-IIIT Pet, ImageFolder trees of mixed sizes) when ``image_size`` is not given."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
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
        raise unreadable_image(where, e) from None
    return img


def unreadable_image(where: str | Path, e: Exception) -> DataError:
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


def resize_tensor_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
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
