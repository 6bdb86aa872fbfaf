"""Model registry: names map to builders; the command line names models."""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn

from zoo.arch_kinds import build_from_arch
from zoo.torchvision_models import TorchvisionArch, torchvision_archs, torchvision_zoo_arch
from zoo.vgg import CFGS, VGGArch, scale_cfg

Builder = Callable[..., VGGArch]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register an arch builder under ``name``; duplicate names are an error."""
    def wrap(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_arch(name: str, *, num_classes: int, in_channels: int, input_size: int,
               width: float = 1.0) -> VGGArch | TorchvisionArch:
    """The architecture description a registered name builds; a torchvision classifier name
    (``resnet18``, ``mobilenet_v3_small``, ...) gives a ``TorchvisionArch`` (width ignored)."""
    if name not in _REGISTRY and name in torchvision_archs():
        return torchvision_zoo_arch(name, num_classes=num_classes, in_channels=in_channels,
                                    input_size=input_size)
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())} and "
                       "torchvision's classifiers (torchvision.models.list_models())")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels,
                           input_size=input_size, width=width)


def create_model(name: str, *, num_classes: int, in_channels: int, input_size: int,
                 width: float = 1.0) -> nn.Module:
    """Build a freshly initialised registered model."""
    return build_arch(model_arch(name, num_classes=num_classes, in_channels=in_channels,
                                 input_size=input_size, width=width))


def build_arch(arch: VGGArch | TorchvisionArch) -> nn.Module:
    """An untrained module from a zoo architecture object (a VGG or a torchvision classifier):
    its description built through the one architecture table (``zoo.arch_kinds``), as a
    checkpoint's is."""
    return build_from_arch(arch.to_dict())


def arch_from_dict(d: dict, input_size: int = 224) -> VGGArch | TorchvisionArch:
    """A card's ``arch`` back as a zoo architecture."""
    return (TorchvisionArch.from_dict(d, input_size) if d.get("kind") == "torchvision"
            else VGGArch.from_dict(d))


def _tiny(depth: int) -> Builder:
    """Tiny VGG of ``depth``; depth 5, the only one with a third pool, pools in ceil mode.

    At 28 px floor pooling takes depth 5 from 7x7 to 3x3, dropping a row and a column of
    features and leaving it fewer parameters than depth 4 (3.37M vs 3.92M); ceil mode keeps
    4x4 (4.28M). Measured, it did not lift depth 5 above depth 4 on the full preset (95.08 /
    94.26% val / test against 95.33 / 94.53% in floor mode; see the README). At even sizes
    such as 32 px the two modes agree (32 -> 16 -> 8 -> 4), so the flattened size there is
    4 x 4 x the last conv's channels either way.
    """
    def build(*, num_classes: int, in_channels: int, input_size: int, width: float = 1.0) -> VGGArch:
        return VGGArch(cfg=scale_cfg(CFGS[f"tiny{depth}"], width), in_channels=in_channels,
                       num_classes=num_classes, input_size=input_size,
                       classifier=[512, 512], dropout=0.5, ceil_mode=depth == 5)
    return build


for _d in range(1, 6):
    register_model(f"tiny_vgg{_d}")(_tiny(_d))


@register_model("vgg19")
def _vgg19(*, num_classes: int, in_channels: int, input_size: int, width: float = 1.0) -> VGGArch:
    """torchvision's VGG19 shape: adaptive 7x7 pool, 4096-wide classifier (~143M at 1000 classes)."""
    return VGGArch(cfg=scale_cfg(CFGS["E"], width), in_channels=in_channels,
                   num_classes=num_classes, input_size=input_size,
                   classifier=[4096, 4096], dropout=0.5, adaptive_pool=[7, 7])


@register_model("vgg19_small")
def _vgg19_small(*, num_classes: int, in_channels: int, input_size: int,
                 width: float = 1.0) -> VGGArch:
    """16 convs for small inputs (ceil-mode pools, so 28x28 works), classifier F-4096-4096-C."""
    return VGGArch(cfg=scale_cfg(CFGS["E"], width), in_channels=in_channels,
                   num_classes=num_classes, input_size=input_size,
                   classifier=[4096, 4096], dropout=0.5, ceil_mode=True)
