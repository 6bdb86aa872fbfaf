"""Accuracy and images/s against pruning level, structured and unstructured (one-shot).

The sweep prunes the trained base once per level without fine-tuning (so it shows the raw
damage each kind of pruning does); structured pruning uses the given norm and layer set,
unstructured pruning the global magnitude ranking. Throughput is images/s at the big batch.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from tqdm.auto import tqdm

from zoo.compress.measure import MeasureSettings, sample_inputs
from zoo.compress.structured import fold_batchnorm, prune_filters
from zoo.compress.unstructured import apply_masks, global_magnitude_masks, make_permanent
from zoo.costs import time_throughput
from zoo.data import DatasetInfo, ImageSet
from zoo.vgg import VGG

LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8)
SWEEP_COLUMNS = ["method", "level", "accuracy", "images_per_second"]


def prune_sweep(base: VGG, *, test: ImageSet | None, info: DatasetInfo | None,
                settings: MeasureSettings, levels: tuple[float, ...] = LEVELS,
                norm: str = "l1", layers: str = "deep",
                progress: bool = True) -> list[dict[str, Any]]:
    """Rows ``{method, level, accuracy, images_per_second}`` (accuracy NaN without data)."""
    from zoo.train import evaluate
    folded = fold_batchnorm(base).eval()
    fa = folded.arch
    xb = sample_inputs(test, info, (fa.in_channels, fa.input_size, fa.input_size),
                       settings.big_batch)
    rows = []
    old = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        jobs = [(m, lv) for m in ("structured", "unstructured") for lv in levels]
        for method, level in tqdm(jobs, desc="prune sweep", disable=not progress, leave=False):
            if method == "structured":
                model = prune_filters(folded, level, norm, layers)[0].eval()
            else:
                model = copy.deepcopy(folded)
                apply_masks(model, global_magnitude_masks(model, level))
                make_permanent(model)
                model.eval()
            acc = (evaluate(model, test, info, batch_size=256)["accuracy"]
                   if test is not None and info is not None else float("nan"))
            thr = time_throughput(model, xb, settings.cost_settings())
            rows.append({"method": method, "level": level, "accuracy": acc,
                         "images_per_second": thr["images_per_second"]})
    finally:
        torch.set_num_threads(old)
    return rows
