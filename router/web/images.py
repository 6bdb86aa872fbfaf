"""Uploads -> model inputs: validate untrusted bytes, then convert the way the dataset was.

``check_upload`` refuses what the server must never decode (empty files, paths in names,
non-PNG/JPEG data, truncated files, decompression bombs) with an ``InputError`` that carries
an HTTP status and a message naming the problem and the fix. ``to_input`` turns a checked
image into the uint8 ``(C, H, W)`` tensor a model of the zoo expects.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from zoo.data import DatasetInfo, load_image_as_input

# MPO is how PIL names the multi-picture JPEG that many phone cameras write (frame 0 is a
# plain JPEG); refusing it would refuse ordinary photos.
ALLOWED_FORMATS = ("PNG", "JPEG", "MPO")
DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: any camera photo, far below a bomb


class InputError(ValueError):
    """Bad input from a client: ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400, **fields: Any):
        super().__init__(message)
        self.status = status
        self.fields = fields   # added to a JSON error body (e.g. parameter, allowed)


@dataclass
class Limits:
    """What an upload may be: bytes on the wire and pixels once decoded."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS


def check_filename(filename: str | None) -> str:
    """Return the bare file name; refuse one that carries a directory or a parent reference."""
    name = filename or ""
    if any(sep in name for sep in ("/", "\\", "\x00")) or name in (".", "..") or ":" in name:
        raise InputError(f"the file name {name!r} contains a path; upload the file under a plain "
                         "name such as 'shirt.png'", 400)
    return name


def check_upload(data: bytes, filename: str | None, limits: Limits) -> Image.Image:
    """Validate an upload and return the fully decoded image (raises ``InputError``)."""
    check_filename(filename)
    if not data:
        raise InputError("the upload is empty (0 bytes); choose a PNG or JPEG file", 400)
    if len(data) > limits.max_bytes:
        raise InputError(f"the upload is {len(data) / 2**20:.1f} MB, over the limit of "
                         f"{limits.max_bytes / 2**20:.1f} MB; send a smaller image or restart "
                         "`serve` with a larger --max-upload-mb", 413)
    with warnings.catch_warnings():
        # PIL warns (and past 2x its limit raises) on huge images; treat both as refusals.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))  # reads the header only
            fmt = img.format
            if fmt not in ALLOWED_FORMATS:
                raise InputError(f"the file is a {fmt} image; only PNG and JPEG are accepted: "
                                 "convert it first", 415)
            w, h = img.size
            if w * h > limits.max_pixels:
                raise InputError(_bomb_message(w, h, limits.max_pixels), 413)
            img.load()  # decode everything now, so truncation shows up here
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise InputError(f"the image is a decompression bomb ({e}); send a smaller image",
                             413) from None
        except UnidentifiedImageError:
            raise InputError("the file is not an image PIL can read; upload a PNG or JPEG", 415) \
                from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InputError(f"the {fmt or 'image'} file is damaged or truncated ({e}); upload a "
                             "complete file", 400) from None
    return img


def _bomb_message(w: int, h: int, limit: int) -> str:
    return (f"the image is {w} x {h} = {w * h:,} pixels, over the limit of {limit:,} "
            "(a decompression bomb guard); downscale it first")


@dataclass
class Converted:
    """A model input plus what was done to get it (shown on the page)."""

    tensor: torch.Tensor  # uint8 (C, H, W)
    inverted: bool
    original_size: tuple[int, int]
    original_mode: str


def to_input(data: bytes, img: Image.Image, info: DatasetInfo) -> Converted:
    """Convert a checked upload like the dataset's own pictures (``zoo.data.load_image_as_input``:
    mode, shorter side resized, centre crop). For single-channel datasets of light objects on
    black (Fashion-MNIST, MNIST: made by negating product photos) a picture with a light border
    (a dark object on light paper) is negated too, and the page says so."""
    x = load_image_as_input(data, info)
    inverted = False
    if info.in_channels == 1 and info.mean and info.mean[0] < 0.5:
        a = x[0]
        border = torch.cat([a[0], a[-1], a[:, 0], a[:, -1]]).float()
        if float(border.mean()) > 127:
            x = 255 - x
            inverted = True
    return Converted(x, inverted, img.size, img.mode)


def resize_input(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """A dataset image uint8 ``(C, H, W)`` for a model of another input size (same PIL steps)."""
    if x.shape[-1] == info.input_size and x.shape[-2] == info.input_size:
        return x
    return load_image_as_input(tensor_to_png(x, scale=1), info)


def tensor_to_png(x: torch.Tensor, scale: int = 4) -> bytes:
    """PNG bytes of a uint8 ``(C, H, W)`` tensor, enlarged ``scale`` times (nearest)."""
    a = x.numpy()
    img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
