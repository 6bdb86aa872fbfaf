"""``res-<side>``: the same weights run on a smaller input.

The model resizes its (dataset-sized) input to ``side`` x ``side`` itself, so every zoo
member takes the same images. A final adaptive average pool is set to the spatial size the
classifier was trained on, so 28 -> 20 or 32 -> 24 keeps the first Linear's shape (for
``vgg19`` at 224 -> 160 the existing 7x7 adaptive pool already does this).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from zoo.vgg import VGG, VGGArch, feature_shape


def resized_arch(arch: VGGArch, side: int) -> VGGArch:
    """The VGG arch at input ``side`` with an adaptive pool to the trained feature size."""
    if arch.batch_norm:
        raise ValueError("fold BatchNorm before making a res-<side> variant")
    if side < 1:
        raise ValueError(f"res-<side>: side must be positive, got {side}")
    _, h, w = feature_shape(arch)
    new = replace(arch, cfg=list(arch.cfg), input_size=int(side), adaptive_pool=[h, w])
    feature_shape(new)  # raises a clear error if the pools leave no pixels
    return new


class ResizedVGG(VGG):
    """A VGG that bilinearly resizes its input to ``arch.input_size`` first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.arch.input_size
        if x.shape[-1] != side or x.shape[-2] != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                              antialias=True)
        return super().forward(x)
