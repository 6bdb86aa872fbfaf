"""How a zoo member turns raw images into its input tensor.

Every model of this project's zoo takes ``(x / 255 - mean) / std`` of uint8 images at the
dataset's size (``zoo.data.normalize`` with the dataset's ``DatasetInfo``). A model of the
user's own may need more: a pretrained torchvision classifier expects ``Resize(256)``,
``CenterCrop(224)`` and ImageNet's mean and std, whatever the data's own statistics are.
``Preprocess`` describes such a pipeline in plain numbers (so an artifact stores it without
pickling code) and runs it on a whole uint8 batch at once, on the batch's device: it is part
of the model's cost and runs inside every clock.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F

from zoo.data import DatasetInfo, normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """uint8 ``(N, C, H, W)`` -> float32: resize, centre-crop, scale to [0, 1], standardise.

    ``resize``: the shorter side is resized to this many pixels (bilinear, antialiased, as
    torchvision's ``Resize(int)``); None keeps the size. ``crop``: a centred square of this
    side (None: no crop). ``channels``: the count the model takes: a grey image is repeated to
    it, an RGB image is averaged to grey (plain mean) for ``channels=1``; any other count is
    refused (None: as given). ``mean``/``std``: per channel, after /255.
    """

    mean: Sequence[float]
    std: Sequence[float]
    resize: int | None = None
    crop: int | None = None
    channels: int | None = None
    name: str = ""
    _stats: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False,
                                                             compare=False)

    def __post_init__(self) -> None:
        self.mean, self.std = [float(m) for m in self.mean], [float(s) for s in self.std]
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per channel, got {self.mean} and "
                             f"{self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        for what, v in (("resize", self.resize), ("crop", self.crop), ("channels", self.channels)):
            if v is not None and int(v) < 1:
                raise ValueError(f"{what} must be a positive integer or None, got {v}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"preprocessing takes a uint8 batch (N, C, H, W), got "
                             f"{images.dtype} of shape {tuple(images.shape)}")
        x = images.float().div_(255.0)
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] == 1:                     # grey -> repeated to every channel
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1 and x.shape[1] == 3:   # RGB -> grey: the plain mean
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ValueError(
                    f"Preprocess(channels={self.channels}) takes {self.channels}-channel images"
                    + (", grey ones (repeated) or RGB ones (averaged to grey)"
                       if self.channels == 1 else " or grey ones (repeated)")
                    + f", got {x.shape[1]} channels; convert the images (RGBA: drop alpha, "
                    "x[:, :3]) or build the preprocessing for them")
        if self.resize is not None:
            h, w = x.shape[-2:]
            s = self.resize / min(h, w)
            size = (max(1, round(h * s)), max(1, round(w * s)))
            if size != (h, w):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                  antialias=True)
        if self.crop is not None:
            h, w = x.shape[-2:]
            if h < self.crop or w < self.crop:
                raise ValueError(f"cannot centre-crop {self.crop} out of {h}x{w}; resize first")
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            x = x[..., top:top + self.crop, left:left + self.crop]
        if x.shape[1] != len(self.mean):
            raise ValueError(f"{x.shape[1]}-channel input but mean/std for {len(self.mean)} "
                             "channels; set channels=")
        mean, std = self._on(x.device)
        return (x - mean) / std

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stats is None or self._stats[0].device != device:
            self._stats = (torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                           torch.tensor(self.std, device=device).view(1, -1, 1, 1))
        return self._stats

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_stats")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(**{k: d[k] for k in ("mean", "std", "resize", "crop", "channels", "name")
                      if k in d})

    @classmethod
    def imagenet(cls, resize: int = 256, crop: int = 224, channels: int | None = 3) -> "Preprocess":
        """What torchvision's pretrained classifiers expect: Resize 256, CenterCrop 224,
        ImageNet mean and std (grey images repeated to 3 channels)."""
        return cls(IMAGENET_MEAN, IMAGENET_STD, resize, crop, channels, name="imagenet")

    @classmethod
    def from_info(cls, info: DatasetInfo) -> "Preprocess":
        """This project's zoo models: the dataset's mean and std at its own size."""
        return cls(info.mean, info.std, name=f"{info.name}-normalize")


PreprocessLike = Union[DatasetInfo, Preprocess, Callable[[torch.Tensor], torch.Tensor]]


def prepare(images: torch.Tensor, how: PreprocessLike) -> torch.Tensor:
    """Run a model's preprocessing on a uint8 batch: a ``DatasetInfo`` standardises with its
    mean and std (this project's zoo), a ``Preprocess`` or any callable is applied as is."""
    if isinstance(how, DatasetInfo):
        return normalize(images, how)
    if callable(how):
        return how(images)
    raise TypeError(f"a model's preprocessing must be a DatasetInfo, a Preprocess or a callable, "
                    f"got {type(how).__name__}")


PREPROCESS_PRESETS: dict[str, Callable[[], Preprocess]] = {"imagenet": Preprocess.imagenet}
