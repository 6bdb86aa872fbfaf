"""The types every dataset module shares: ``DatasetInfo`` (what a model needs to know about
its inputs), ``ImageSet`` (uint8 images in memory), ``DataError``, and ``normalize``."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch


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


def channel_stats(images: torch.Tensor, max_samples: int = 10000
                  ) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (of pixels / 255) over the first ``max_samples`` images."""
    x = images[:max_samples].float() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def image_info(name: str, classes: list[str], train: ImageSet, source: str) -> DatasetInfo:
    """The ``DatasetInfo`` of a decoded dataset, its statistics taken from ``train``."""
    mean, std = channel_stats(train.images)
    return DatasetInfo(name=name, num_classes=len(classes), in_channels=int(train.images.shape[1]),
                       input_size=int(train.images.shape[-1]), classes=classes, mean=mean,
                       std=std, source=source)


Loader = Callable[..., tuple[ImageSet, ImageSet, DatasetInfo]]
