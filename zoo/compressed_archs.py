"""Arch kinds of compressed variants and their builders (``BUILDERS``, listed in the
architecture table ``zoo.arch_kinds``).

They live in ``zoo`` itself, beside ``zoo.quant`` and ``zoo.resolution`` whose modules they
build, because loading a checkpoint (``zoo.checkpoint``) must rebuild any variant and the zoo
core never imports ``zoo.compress``, the package that makes the variants.

Every variant's arch is ``{"kind": ..., "float_arch": <plain VGG arch>, ...}``; the float
arch has the variant's shape (MACs are counted on it). Builders return an untrained module
whose ``load_state_dict`` accepts the saved state:

- ``pruned``   (structured; a narrower cfg) and ``sparse`` (unstructured): a plain VGG.
- ``resized``: ``ResizedVGG`` (resizes its input to ``float_arch.input_size``).
- ``quantized``: ``method`` "dynamic" (Linear layers) or "fx" (``scheme`` int8 / qat8):
  float model -> prepare/convert with the recorded scheme and example input.
- ``qat4-packed``: the converted ``qat4`` model inside ``PackedInt4Model``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo import quant
from zoo.resolution import ResizedVGG
from zoo.vgg import VGG, VGGArch

KINDS = ("pruned", "sparse", "resized", "quantized", "qat4-packed")


def float_arch(arch: dict[str, Any]) -> VGGArch:
    if "float_arch" not in arch:
        raise ValueError(f"compressed arch (kind={arch.get('kind')!r}) has no 'float_arch'")
    return VGGArch.from_dict(arch["float_arch"])


def example_input(fa: VGGArch, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, fa.in_channels, fa.input_size, fa.input_size)


def make_arch(kind: str, fa: VGGArch, **extra: Any) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown compressed kind {kind!r}")
    return {"kind": kind, "float_arch": fa.to_dict(), **extra}


def build_plain(arch: dict[str, Any]) -> nn.Module:
    return VGG(float_arch(arch))


def build_resized(arch: dict[str, Any]) -> nn.Module:
    return ResizedVGG(float_arch(arch))


def build_quantized(arch: dict[str, Any]) -> nn.Module:
    fa = float_arch(arch)
    method = arch.get("method")
    if method == "dynamic":
        return quant.quantize_dynamic_linear(VGG(fa))
    if method == "fx":
        return quant.structure(VGG(fa), example_input(fa), arch["scheme"])
    raise ValueError(f"quantized arch has unknown method {method!r}; use 'dynamic' or 'fx'")


def build_qat4(arch: dict[str, Any]) -> nn.Module:
    fa = float_arch(arch)
    return quant.PackedInt4Model(quant.structure(VGG(fa), example_input(fa), "qat4"))


BUILDERS = {"pruned": build_plain, "sparse": build_plain, "resized": build_resized,
            "quantized": build_quantized, "qat4-packed": build_qat4}
