"""Input checks of the library API: refuse bad images where they enter, saying what and how.

Two rules, the same for numpy arrays and torch tensors:

* **values** (``to_uint8``): uint8 is kept; floats whose every value lies in [0, 1] become
  ``round(x * 255)``; integers whose every value lies in 0..255 are cast. Anything else
  (floats in 0-255, normalised floats with negative values, NaN, bool, 16-bit images) is
  refused with the range found and the fix, never clamped or rescaled silently.
* **layout** (``channels_first``): images are ``(C, H, W)`` / batches ``(N, C, H, W)`` with C
  = 1 (grey) or 3 (RGB). Where that axis is not 1 or 3 but the last one is, the image is
  channel-last (``(H, W, C)``, as PIL and numpy give them) and is permuted to channel-first;
  ``(H, W)`` is one grey image. Any other shape is refused (RGBA: drop the alpha channel).
  ``load_images`` applies both rules; a routed classifier takes uint8 ``(N, C, H, W)`` only
  and checks every batch against the shape it was fitted on (``check_batch``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from router.base import RouterError

CHANNELS = (1, 3)


def as_tensor(x: Any) -> torch.Tensor:
    """A numpy array or a torch tensor (anything else ``torch.as_tensor`` takes) as a tensor."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x)


def to_uint8(x: Any, what: str = "images") -> torch.Tensor:
    """``x`` (numpy or torch) as uint8 by the values rule of this module."""
    t = as_tensor(x)
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool or t.is_complex():
        raise RouterError(f"{what} must be uint8 0-255 or floats in [0, 1], got {t.dtype}")
    if t.numel() == 0:
        return t.to(torch.uint8)
    if t.is_floating_point():
        lo, hi = float(t.min()), float(t.max())
        if np.isnan(lo) or np.isnan(hi):
            raise RouterError(f"{what} contain NaN; give uint8 0-255 or floats in [0, 1]")
        if lo < 0.0 or hi > 1.0:
            fix = ("values look like 0-255 pixels: cast them, x.astype(np.uint8) / x.to("
                   "torch.uint8)" if lo >= 0.0 and hi <= 255.0 else
                   "values look normalised: undo the normalisation (x * std + mean) first; "
                   "each member normalises its inputs itself")
            raise RouterError(f"float {what} must lie in [0, 1] (scaled by 255 and rounded to "
                              f"uint8), got values in [{lo:g}, {hi:g}]; {fix}")
        return t.to(torch.float32).mul(255.0).round_().to(torch.uint8)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi > 255:
        raise RouterError(f"integer {what} ({t.dtype}) must lie in 0..255 to be 8-bit pixels, got "
                          f"values in [{lo}, {hi}]; scale them to 0..255 (16-bit images: x // 257)")
    return t.to(torch.uint8)


def channels_first(t: torch.Tensor, batched: bool, what: str = "images") -> torch.Tensor:
    """``t`` (one image, or a batch when ``batched``) channel-first by the layout rule."""
    shape = tuple(t.shape)
    body = shape[1:] if batched else shape
    if len(body) == 2:                                  # (H, W): grey
        return t.unsqueeze(1 if batched else 0)
    if len(body) != 3:
        want = "(N, C, H, W)" if batched else "(C, H, W) or (H, W, C)"
        raise RouterError(f"{what} must be {want}, got shape {shape}")
    if body[0] in CHANNELS:
        return t
    if body[-1] in CHANNELS:                            # (H, W, C): PIL / numpy layout
        return t.permute(0, 3, 1, 2) if batched else t.permute(2, 0, 1)
    hint = (" (4 channels: RGBA? drop the alpha channel, x[..., :3] or x[:, :3])"
            if 4 in (body[0], body[-1]) else "")
    raise RouterError(f"cannot tell the channel axis of {what} of shape {shape}: give "
                      f"{'(N, C, H, W)' if batched else '(C, H, W)'} with C = 1 (grey) or 3 "
                      f"(RGB){hint}")


def looks_channel_last(shape: Sequence[int], want: Sequence[int]) -> bool:
    """A batch shape ``(N, H, W, C)`` where ``(N, C, H, W)`` with (C, H, W) = ``want`` was due."""
    return len(shape) == 4 and tuple(shape[1:]) == (want[1], want[2], want[0]) \
        and tuple(shape[1:]) != tuple(want)


def check_batch(images: Any, want: Sequence[int] | None, who: str = "this classifier"
                ) -> torch.Tensor:
    """A uint8 ``(N, C, H, W)`` batch whose ``(C, H, W)`` is ``want`` (None: any), else a
    ``RouterError`` naming the problem and the fix. ``(N, H, W)`` is taken for grey."""
    x = as_tensor(images)
    if x.dtype != torch.uint8:
        raise RouterError(f"images must be uint8 (0-255), got {x.dtype}; pass raw pixels, the "
                          "classifier normalises them itself (load_images converts floats in "
                          "[0, 1])")
    if want is None:
        if x.ndim != 4:
            raise RouterError(f"images must be a batch (N, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] not in CHANNELS and x.shape[-1] in CHANNELS:
            raise RouterError(f"images of shape {tuple(x.shape)} look channel-last (N, H, W, C); "
                              f"{who} takes (N, C, H, W): pass x.permute(0, 3, 1, 2) (torch) or "
                              f"x.transpose(0, 3, 1, 2) (numpy)")
        return x
    c, h, w = (int(v) for v in want)
    if x.ndim == 3 and c == 1 and tuple(x.shape[1:]) == (h, w):
        x = x.unsqueeze(1)
    shape = tuple(x.shape)
    if x.ndim == 4 and shape[1:] == (c, h, w):
        return x
    if looks_channel_last(shape, (c, h, w)):
        raise RouterError(f"images of shape {shape} look channel-last (N, H, W, C); {who} takes "
                          f"(N, C, H, W) = (N, {c}, {h}, {w}): pass x.permute(0, 3, 1, 2) (torch) "
                          f"or x.transpose(0, 3, 1, 2) (numpy)")
    if x.ndim != 4:
        raise RouterError(f"images must be a batch (N, {c}, {h}, {w}), got shape {shape}")
    if shape[1] != c:
        fix = ("repeat the grey channel, x.expand(-1, 3, -1, -1)" if shape[1] == 1 and c == 3
               else "convert them to the channels it was fitted on")
        raise RouterError(f"images have {shape[1]} channel(s) but {who} was fitted on {c}-channel "
                          f"images (N, {c}, {h}, {w}); {fix}")
    raise RouterError(f"images are {shape[2]}x{shape[3]} but {who} was fitted on {h}x{w} images "
                      f"(N, {c}, {h}, {w}); bring them to that size first, e.g. "
                      f"load_images(source, size={h})" if h == w else
                      f"images are {shape[2]}x{shape[3]} but {who} was fitted on {h}x{w} images "
                      f"(N, {c}, {h}, {w}); resize them to {h}x{w} first")


def fitted_input_shape(sources: Sequence[tuple[str, Any]]) -> tuple[int, int, int]:
    """The one image shape ``(C, H, W)`` that every known source (``(where, shape or None)``)
    names; refused where none is known or two disagree."""
    known: list[tuple[str, tuple[int, int, int]]] = []
    for where, shape in sources:
        if shape is None:
            continue
        try:
            s = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            s = ()
        if len(s) != 3 or min(s) < 1:
            raise RouterError(f"{where} must be an image shape (C, H, W), got {shape!r}")
        known.append((where, s))           # type: ignore[arg-type]
    if not known:
        raise RouterError("routed_classifier needs the image shape the router was fitted on, to "
                          "check every call against it: pass data=val (the ImageData of the val "
                          "table) or input_shape=(C, H, W)")
    for where, s in known[1:]:
        if s != known[0][1]:
            raise RouterError(f"{known[0][0]} gives images of shape {known[0][1]} but {where} "
                              f"gives {s}: give the shape the router was fitted on")
    return known[0][1]


def fitted_class_count(sources: Sequence[tuple[str, int | None]]) -> int | None:
    """The one class count every known source names (None: none known)."""
    known = [(w, int(n)) for w, n in sources if n is not None]
    for where, n in known[1:]:
        if n != known[0][1]:
            raise RouterError(f"{known[0][0]} has {known[0][1]} classes but {where} has {n}")
    return known[0][1] if known else None


def member_outputs(name: str, model: torch.nn.Module, preprocess: Any,
                   shape: Sequence[int]) -> int:
    """How many outputs (classes) member ``name`` gives for one mid-grey uint8 image of
    ``shape`` (C, H, W), through its own preprocessing on its own device; refused, with the
    member's error, where it cannot take that image at all."""
    from router.execute import run_model
    c, h, w = (int(v) for v in shape)
    dummy = torch.full((1, c, h, w), 128, dtype=torch.uint8)
    try:
        out = run_model(model, dummy, preprocess, 1)
    except Exception as e:                       # noqa: BLE001 - reported with the reason
        raise RouterError(f"member {name!r} cannot classify a {c}x{h}x{w} image, the shape "
                          f"(C, H, W) the router was fitted on ({type(e).__name__}: {e}); give "
                          f"members (and preprocessing) built for these images") from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise RouterError(f"member {name!r} answers one {c}x{h}x{w} image with shape "
                          f"{tuple(out.shape)}; a classifier returns logits (N, classes)")
    return int(out.shape[1])
