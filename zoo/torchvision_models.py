"""torchvision's classifiers as zoo members: built by name, random weights, never downloaded.

``build_torchvision("resnet18", num_classes=10)`` is ``torchvision.models.get_model`` with
``weights=None``: nothing is fetched at run time (a user's own trained weights are loaded from
a state dict file by whoever calls this). ``in_channels`` other than 3 replaces the first
convolution (grey images) with one of the same shape otherwise; ``small_input`` adapts the
stem for inputs far below 224 pixels (32-64: CIFAR-style) where a ResNet's stride-2 7x7
convolution and max-pool would leave almost nothing to classify.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from torch import nn


def torchvision_archs() -> list[str]:
    """Classification architectures torchvision builds (``resnet18``, ``mobilenet_v3_small``...)."""
    from torchvision import models
    return list(models.list_models(module=models))


def build_torchvision(arch: str, num_classes: int, *, in_channels: int = 3,
                      small_input: bool = False, **kwargs: Any) -> nn.Module:
    """A torchvision classifier with ``num_classes`` outputs and random weights."""
    from torchvision import models
    known = torchvision_archs()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5)
        raise ValueError(f"unknown torchvision classifier {arch!r}"
                         + (f"; did you mean one of {close}?" if close else
                            "; see torchvision.models.list_models()"))
    if "weights" in kwargs and kwargs["weights"] is not None:
        raise ValueError("pretrained weights are never downloaded here: build with random "
                         "weights and load your own state dict file")
    kwargs.pop("weights", None)
    if arch.startswith(("inception", "googlenet")):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    model = models.get_model(arch, weights=None, num_classes=int(num_classes), **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    if small_input:
        _small_stem(model)
    return model.eval()


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride,
                            mod.padding, mod.dilation, mod.groups if mod.groups == 1 else
                            in_channels, mod.bias is not None)
            _set_module(model, name, new)
            return
    raise ValueError("found no 3-channel first convolution to adapt")


def _small_stem(model: nn.Module) -> None:
    """ResNets: a 3x3 stride-1 first conv and no max-pool (the CIFAR variant)."""
    conv1 = getattr(model, "conv1", None)
    if isinstance(conv1, nn.Conv2d) and hasattr(model, "maxpool"):
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return
    raise ValueError("small_input is supported for ResNet-style models (conv1 + maxpool) only")


def _set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent = root
    *path, last = dotted.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)


def is_torchvision_arch(arch: dict[str, Any]) -> bool:
    """Whether a checkpoint's ``arch`` dict describes a torchvision classifier."""
    return arch.get("kind") == "torchvision"


def torchvision_arch_dict(arch: str, num_classes: int, **kwargs: Any) -> dict[str, Any]:
    """The ``arch`` description stored beside a torchvision member's state dict."""
    return {"kind": "torchvision", "name": arch, "num_classes": int(num_classes), **kwargs}


def build_from_torchvision_arch(arch: dict[str, Any]) -> nn.Module:
    """Rebuild from ``torchvision_arch_dict``'s description."""
    extra = {k: v for k, v in arch.items() if k not in ("kind", "name", "num_classes")}
    return build_torchvision(arch["name"], arch["num_classes"], **extra)



@dataclass
class TorchvisionArch:
    """A torchvision classifier as a zoo architecture (``train-zoo --models resnet18``): what a
    checkpoint's ``arch`` records. ``batch_norm``/``dropout`` are the recipe's fields, kept for
    the orchestration's sake; torchvision's own architecture decides both."""

    name: str
    num_classes: int
    in_channels: int = 3
    small_input: bool = False
    input_size: int = 224
    batch_norm: bool = True
    dropout: float | None = None
    kind: str = "torchvision"

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.in_channels != 3:
            extra["in_channels"] = self.in_channels
        if self.small_input:
            extra["small_input"] = True
        return torchvision_arch_dict(self.name, self.num_classes, **extra)

    def build(self) -> nn.Module:
        return build_from_torchvision_arch(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], input_size: int = 224) -> "TorchvisionArch":
        return cls(d["name"], int(d["num_classes"]), int(d.get("in_channels", 3)),
                   bool(d.get("small_input", False)), input_size)


def torchvision_zoo_arch(name: str, *, num_classes: int, in_channels: int,
                         input_size: int) -> TorchvisionArch:
    """A torchvision model trained from scratch on the run's own data at its own size: the
    first convolution takes the data's channels, and ResNets below 96 px get the small-input
    stem (3x3 conv, no max-pool) so a 28 px image is not pooled away."""
    small = input_size < 96 and name.startswith(("resnet", "wide_resnet", "resnext"))
    arch = TorchvisionArch(name, num_classes, in_channels, small, input_size)
    arch.build()                                   # fails early with the known names
    return arch
