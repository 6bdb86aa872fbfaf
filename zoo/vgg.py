"""VGG networks built from a cfg list: an architecture is data.

The module layout (``features``, ``avgpool``, ``classifier``) matches torchvision's VGG so
torchvision state dicts load by key. ``VGGArch`` is the JSON-able description stored in every
checkpoint; ``VGG.from_arch`` rebuilds the network exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

Cfg = list  # entries: int (conv out channels) or "M" (2x2 max-pool)

CFGS: dict[str, list[int | str]] = {
    "tiny1": [64, "M"],
    "tiny2": [64, 64, "M"],
    "tiny3": [64, 64, "M", 128, 128, "M"],
    "tiny4": [64, 64, 64, "M", 128, 128, 128, "M"],
    "tiny5": [64, 64, 64, "M", 128, 128, 128, "M", 256, 256, 256, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


@dataclass
class VGGArch:
    """Everything needed to rebuild a VGG: saved as ``arch`` in checkpoints."""

    cfg: list
    in_channels: int
    num_classes: int
    input_size: int
    classifier: list[int] = field(default_factory=lambda: [512, 512])
    dropout: float = 0.5
    batch_norm: bool = False
    ceil_mode: bool = False
    adaptive_pool: list[int] | None = None  # [h, w] of an AdaptiveAvgPool2d before flatten
    kind: str = "vgg"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VGGArch":
        d = dict(d)
        if d.get("kind", "vgg") != "vgg":
            raise ValueError(f"not a plain VGG arch (kind={d.get('kind')!r})")
        return cls(**d)


def _pool_out(size: int, ceil_mode: bool) -> int:
    return -(-size // 2) if ceil_mode else size // 2


def feature_shape(arch: VGGArch) -> tuple[int, int, int]:
    """(channels, h, w) entering the classifier, computed from the cfg and input size."""
    h = w = arch.input_size
    channels = arch.in_channels
    for v in arch.cfg:
        if v == "M":
            h, w = _pool_out(h, arch.ceil_mode), _pool_out(w, arch.ceil_mode)
            if h < 1 or w < 1:
                raise ValueError(
                    f"input {arch.input_size}x{arch.input_size} is too small for cfg {arch.cfg}: "
                    "a max-pool would leave no pixels; use a larger input, ceil_mode=True or "
                    "an adaptive_pool")
        else:
            channels = int(v)
    if arch.adaptive_pool is not None:
        h, w = arch.adaptive_pool
    return channels, h, w


def make_layers(cfg: Sequence[int | str], in_channels: int, batch_norm: bool,
                ceil_mode: bool) -> nn.Sequential:
    """3x3 conv (+BN) + ReLU per int, 2x2 max-pool per "M" (torchvision's numbering)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
        else:
            conv = nn.Conv2d(channels, int(v), kernel_size=3, padding=1)
            layers += [conv, nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)] if batch_norm \
                else [conv, nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG(arch): features -> (adaptive pool) -> flatten -> classifier."""

    def __init__(self, arch: VGGArch):
        super().__init__()
        self.arch = arch
        c, h, w = feature_shape(arch)
        self.features = make_layers(arch.cfg, arch.in_channels, arch.batch_norm, arch.ceil_mode)
        self.avgpool = (nn.AdaptiveAvgPool2d(tuple(arch.adaptive_pool))
                        if arch.adaptive_pool is not None else nn.Identity())
        widths = [c * h * w, *arch.classifier]
        head: list[nn.Module] = []
        for i in range(len(widths) - 1):
            head += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU(inplace=True),
                     nn.Dropout(p=arch.dropout)]
        head.append(nn.Linear(widths[-1], arch.num_classes))
        self.classifier = nn.Sequential(*head)
        self.reset_parameters()

    @property
    def flat_features(self) -> int:
        c, h, w = feature_shape(self.arch)
        return c * h * w

    def reset_parameters(self) -> None:
        """Kaiming-normal convs (fan_out, as torchvision), N(0, 0.01) linears, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in_channels, H, W) -> logits (B, num_classes)
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)

    @classmethod
    def from_arch(cls, arch: VGGArch | dict[str, Any]) -> "VGG":
        return cls(arch if isinstance(arch, VGGArch) else VGGArch.from_dict(arch))


def scale_cfg(cfg: Sequence[int | str], width: float) -> list[int | str]:
    """Multiply every conv width by ``width`` (at least one channel each)."""
    return [v if v == "M" else max(1, int(round(int(v) * width))) for v in cfg]
