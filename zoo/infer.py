"""Batched inference on in-memory uint8 images: the one way every step runs a model."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.data import ImageSet
from zoo.preprocess import PreprocessLike, prepare


@torch.inference_mode()
def predict_logits(model: nn.Module, images: ImageSet | torch.Tensor, info: PreprocessLike,
                   batch_size: int = 256, device: str | torch.device = "cpu",
                   progress: bool = False, desc: str = "predict") -> torch.Tensor:
    """Logits ``(N, C)`` float32 on the CPU for uint8 images ``(N, C, H, W)``; ``info`` is the
    model's preprocessing (a ``DatasetInfo``: the dataset's normalisation; or a ``Preprocess``)."""
    x_all = images.images if isinstance(images, ImageSet) else images
    model.eval()
    out = []
    starts = range(0, len(x_all), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        x = prepare(x_all[s:s + batch_size].to(device), info)
        out.append(model(x).float().cpu())
    if not out:
        return torch.empty(0, getattr(info, "num_classes", 0))
    return torch.cat(out)
