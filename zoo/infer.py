"""Batched inference on in-memory uint8 images: the one loop every step runs a model with
(tables, add-model, the executor that times routers)."""
from __future__ import annotations

import time

import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.data import ImageSet
from zoo.device import device_of, synchronize
from zoo.preprocess import PreprocessLike, prepare


@torch.inference_mode()
def predict_logits(model: nn.Module, images: ImageSet | torch.Tensor, info: PreprocessLike,
                   batch_size: int = 256, device: str | torch.device | None = None,
                   progress: bool = False, desc: str = "predict",
                   batch_seconds: list[float] | None = None) -> torch.Tensor:
    """Logits ``(N, C)`` float32 on the CPU for uint8 images ``(N, C, H, W)``; ``info`` is the
    model's preprocessing (a ``DatasetInfo``: the dataset's normalisation; or a ``Preprocess``).

    Each batch moves to ``device`` (default: the model's own) unless it is there already, is
    preprocessed there and runs. With ``batch_seconds`` each batch's wall clock (copy,
    preprocessing, forward pass, read after the device is synchronised) is appended to it, so
    a GPU's asynchronous kernels are inside the time they are charged to."""
    x_all = images.images if isinstance(images, ImageSet) else images
    device = device_of(model) if device is None else torch.device(device)
    model.eval()
    out = []
    starts = range(0, len(x_all), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        t0 = time.perf_counter()
        xb = x_all[s:s + batch_size]
        if xb.device != device:
            xb = xb.to(device, non_blocking=True)
        y = model(prepare(xb, info)).float()
        synchronize(device)
        out.append(y.cpu())
        if batch_seconds is not None:
            batch_seconds.append(time.perf_counter() - t0)
    if not out:
        return torch.empty(0, getattr(info, "num_classes", 0))
    return torch.cat(out)
