"""Training throughput, float32 against bfloat16 autocast, per zoo model, measured in one run.

What ``scripts/bench_train.py`` prints: the ratio that decides whether ``--amp bf16`` is worth
it on the machine at hand (it is on CPUs with AVX512-BF16 or AMX; elsewhere it can be slower).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from zoo.data import DatasetInfo
from zoo.registry import create_model
from zoo.train import training_images_per_second


@dataclass
class TrainSpeedRow:
    """One model's measured training throughput (images per second) in both precisions."""

    model: str
    width: float
    fp32_images_per_second: float
    bf16_images_per_second: float

    @property
    def speedup(self) -> float:
        return self.bf16_images_per_second / self.fp32_images_per_second


def measure_amp_speedups(models: list[str], info: DatasetInfo, *, width: float = 1.0,
                         batch_size: int = 128, steps: int = 3, repeats: int = 3,
                         threads: int | None = None, channels_last: bool = True,
                         device: str = "cpu", progress: bool = True) -> list[TrainSpeedRow]:
    """Median training images/s of each model in float32 and under bf16 autocast, side by side.

    Both precisions start from the same weights and run on the same random batch; the two
    measurements of a model are taken back to back so that machine load affects both alike.
    """
    rows = []
    for name in tqdm(models, desc="models", disable=not progress):
        torch.manual_seed(0)
        model = create_model(name, num_classes=info.num_classes, in_channels=info.in_channels,
                             input_size=info.input_size, width=width)
        speed = {amp: training_images_per_second(
            model, info, batch_size=batch_size, steps=steps, repeats=repeats,
            channels_last=channels_last, threads=threads, device=device, amp=amp)
            for amp in ("off", "bf16")}
        rows.append(TrainSpeedRow(name, width, speed["off"], speed["bf16"]))
    return rows
