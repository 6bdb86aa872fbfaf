"""The architecture table: ``arch["kind"]`` -> builder of an untrained module.

A checkpoint's ``arch`` names its kind ("vgg" for a plain VGG, the default when ``kind`` is
missing); ``build_from_arch`` looks the kind up in ``ARCH_KINDS`` and builds the module whose
``load_state_dict`` accepts the saved weights. The table lists every kind this repository
makes: plain VGGs, the compressed variants (``zoo.compressed_archs.BUILDERS``), torchvision
classifiers by name (``zoo.torchvision_models``) and committees of k same-architecture members
(``zoo.committee``: ``arch["member_arch"]`` is built through this table again).
``register_arch_kind`` adds a kind from outside (an extension, a test).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from zoo.committee import Committee
from zoo.compressed_archs import BUILDERS as COMPRESSED_BUILDERS
from zoo.torchvision_models import build_from_torchvision_arch
from zoo.vgg import VGG

ArchBuilder = Callable[[dict[str, Any]], nn.Module]


def build_vgg(arch: dict[str, Any]) -> nn.Module:
    return VGG.from_arch(arch)


def build_committee(arch: dict[str, Any]) -> nn.Module:
    return Committee.from_arch(arch, build_from_arch)     # each member through this table


ARCH_KINDS: dict[str, ArchBuilder] = {"vgg": build_vgg, **COMPRESSED_BUILDERS,
                                      "torchvision": build_from_torchvision_arch,
                                      "committee": build_committee}


def register_arch_kind(kind: str, builder: ArchBuilder) -> None:
    """Register how to build an (untrained) module for checkpoints whose arch has ``kind``."""
    if kind in ARCH_KINDS and ARCH_KINDS[kind] is not builder:
        raise ValueError(f"arch kind {kind!r} is already registered")
    ARCH_KINDS[kind] = builder


def build_from_arch(arch: dict[str, Any]) -> nn.Module:
    """Build the module an arch description names (weights not loaded)."""
    kind = arch.get("kind", "vgg")
    if kind not in ARCH_KINDS:
        raise ValueError(f"unknown arch kind {kind!r}; known: {sorted(ARCH_KINDS)}")
    return ARCH_KINDS[kind](arch)
