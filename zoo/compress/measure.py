"""The compression table: one row per variant against its base, every figure measured.

Columns (``COLUMNS``): parameters (total, non-zero), pruning rate (parameters physically
removed vs the base), MACs (counted on the float twin at the variant's own input size),
sparsity (zero weights among those left), checkpoint size (MB = 1e6 bytes) and its reduction
vs the base, top-1/top-5 on test (fractions), latency at batch 1 and batch 64 (median after
warm-up, fixed threads), speedups vs the base, peak memory added by one batch-64 inference
(fresh subprocess), CPU use during the batch-64 timing (100 = one core busy) and L1/L2 norms
of all conv/Linear weights (dequantized). The base's own row has ``variant`` equal to the base
name. "Batch 64" is ``MeasureSettings.big_batch`` (64 unless set; recorded in ``big_batch``).
The pruning rate compares against the base with BatchNorm folded (``ref_params``), so a
variant that only folds BN and quantizes has a pruning rate of 0.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo import quant
from zoo.compressed_archs import float_arch
from zoo.costs import CostSettings, count_macs, count_params, peak_memory_mb, time_latency, \
    time_throughput
from zoo.data import DatasetInfo, ImageSet, normalize
from zoo.vgg import VGG, VGGArch

MB = 1e6
COLUMNS = ["variant", "base", "params", "nonzero_params", "pruning_rate", "macs", "sparsity",
           "size_mb", "size_reduction", "top1", "top5", "latency_ms_b1", "latency_ms_b64",
           "speedup_b1", "speedup_b64", "peak_memory_mb", "cpu_percent", "l1_norm", "l2_norm"]
EXTRA_COLUMNS = ["kind", "input_size", "sparse_file_mb", "images_per_second_b64", "big_batch",
                 "threads", "model_name"]


@dataclass
class MeasureSettings:
    """How the table is measured (recorded in the card/CSV via ``threads``)."""

    threads: int = 2
    big_batch: int = 64
    latency_runs: int = 10
    batch_repeats: int = 3
    budget_s: float = 3.0
    memory: bool = True

    def cost_settings(self) -> CostSettings:
        return CostSettings(threads=self.threads, throughput_batch=self.big_batch,
                            min_latency_runs=self.latency_runs,
                            max_latency_runs=max(self.latency_runs, 100),
                            min_throughput_repeats=self.batch_repeats,
                            max_throughput_repeats=max(self.batch_repeats, 10),
                            budget_s=self.budget_s, memory="rss" if self.memory else "off")


def weight_values(model: nn.Module) -> list[torch.Tensor]:
    """Flattened float32 weights (no biases) of every conv/Linear, float or quantized."""
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not type(m).__module__.startswith(
                "torch.ao"):
            out.append(m.weight.detach().float().flatten())
    for _, m in quant.quantized_layers(model):
        out.append(m.weight().dequantize().flatten())
    return out


def weight_norms(model: nn.Module) -> tuple[float, float]:
    """(L1, L2) norm of all conv/Linear weights taken together."""
    ws = weight_values(model)
    l1 = sum(float(w.abs().sum()) for w in ws)
    l2 = math.sqrt(sum(float(w.pow(2).sum()) for w in ws))
    return l1, l2


def weight_histogram(model: nn.Module, variant: str, edges: np.ndarray) -> list[dict[str, Any]]:
    """Rows ``{variant, bin_left, bin_right, count}``; values outside the edges go to the ends."""
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    for w in weight_values(model):
        v = np.clip(w.numpy(), edges[0], edges[-1])
        counts += np.histogram(v, bins=edges)[0]
    return [{"variant": variant, "bin_left": float(edges[i]), "bin_right": float(edges[i + 1]),
             "count": int(counts[i])} for i in range(len(counts))]


def histogram_edges(model: nn.Module, bins: int = 60) -> np.ndarray:
    """Symmetric edges covering the base model's largest |weight| (shared by all variants)."""
    a = max(float(w.abs().max()) for w in weight_values(model))
    return np.linspace(-a, a, bins + 1)


def macs_of(arch: dict[str, Any] | VGGArch) -> int:
    """MACs of one image on the plain-VGG twin at its own input size."""
    fa = arch if isinstance(arch, VGGArch) else (
        VGGArch.from_dict(arch) if arch.get("kind", "vgg") == "vgg" else float_arch(arch))
    return count_macs(VGG(fa), (1, fa.in_channels, fa.input_size, fa.input_size))


def sample_inputs(images: ImageSet | None, info: DatasetInfo | None, shape: tuple[int, ...],
            n: int) -> torch.Tensor:
    if images is not None and info is not None and len(images):
        x = normalize(images.images[:n], info)
        reps = math.ceil(n / len(x))
        return x.repeat(reps, 1, 1, 1)[:n] if reps > 1 else x
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))


def measure(model: nn.Module, *, variant: str, base: str, model_name: str,
            arch: dict[str, Any], checkpoint: str | Path, settings: MeasureSettings,
            test: ImageSet | None = None, info: DatasetInfo | None = None,
            input_shape: tuple[int, ...] | None = None,
            base_row: dict[str, Any] | None = None,
            sparse_file: str | Path | None = None,
            ref_params: int | None = None) -> dict[str, Any]:
    """One row of the compression table (``base_row`` None: this is the base itself).

    ``ref_params``: the parameter count pruning is measured against (the BN-folded base);
    defaults to the base row's own count.
    """
    from zoo.train import evaluate
    model = model.cpu().eval()
    old = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        params, nonzero = count_params(model)
        fa = VGGArch.from_dict(arch) if arch.get("kind", "vgg") == "vgg" else float_arch(arch)
        shape = input_shape or (fa.in_channels, fa.input_size, fa.input_size)
        cs = settings.cost_settings()
        xb = sample_inputs(test, info, shape, settings.big_batch)
        lat = time_latency(model, xb[:1], cs)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        thr = time_throughput(model, xb, cs)
        cpu_pct = 100.0 * (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
        acc = evaluate(model, test, info, batch_size=256) if test is not None and info else {}
        mem = (peak_memory_mb(checkpoint, tuple(xb.shape), settings.threads)["peak_memory_mb"]
               if settings.memory else float("nan"))
        l1, l2 = weight_norms(model)
    finally:
        torch.set_num_threads(old)
    size = Path(checkpoint).stat().st_size / MB
    row: dict[str, Any] = {
        "variant": variant, "base": base, "model_name": model_name, "params": params,
        "nonzero_params": nonzero, "macs": macs_of(arch),
        "sparsity": 1.0 - nonzero / params if params else 0.0, "size_mb": size,
        "top1": acc.get("accuracy", float("nan")), "top5": acc.get("top5", float("nan")),
        "latency_ms_b1": lat["latency_ms_b1"],
        "latency_ms_b64": 1000.0 * thr["throughput_seconds_median"],
        "images_per_second_b64": thr["images_per_second"], "peak_memory_mb": mem,
        "cpu_percent": cpu_pct, "l1_norm": l1, "l2_norm": l2, "threads": settings.threads,
        "big_batch": settings.big_batch,
        "kind": arch.get("kind", "vgg"), "input_size": fa.input_size,
        "sparse_file_mb": Path(sparse_file).stat().st_size / MB if sparse_file else ""}
    ref = base_row or row
    n_ref = ref_params if ref_params is not None else ref["params"]
    row["pruning_rate"] = 1.0 - params / n_ref if n_ref else 0.0
    row["size_reduction"] = 1.0 - size / ref["size_mb"] if ref["size_mb"] else 0.0
    row["speedup_b1"] = ref["latency_ms_b1"] / row["latency_ms_b1"]
    row["speedup_b64"] = ref["latency_ms_b64"] / row["latency_ms_b64"]
    return row


def table_batch(rows: list[dict[str, Any]]) -> str:
    """The big batch the rows were timed at (their ``big_batch``), as a column label: ``8``;
    ``big`` when the rows were timed at different batches or do not say."""
    batches = {str(r.get("big_batch", "")) for r in rows}
    return batches.pop() if len(batches) == 1 and "" not in batches else "big"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width console table of the main columns; the big-batch columns are headed with
    the batch the rows were timed at (``ms@8``, ``x@8`` for ``--big-batch 8``)."""
    b = table_batch(rows)
    head = (f"{'variant':<22}{'params':>11}{'nz%':>6}{'MMACs':>9}{'MB':>9}{'red%':>6}"
            f"{'top1%':>7}{'top5%':>7}{'ms@1':>8}{'ms@' + b:>9}{'x@1':>6}{'x@' + b:>6}"
            f"{'memMB':>7}")
    lines = [head, "-" * len(head)]
    pct = lambda v: "" if v == "" or v is None or (isinstance(v, float) and math.isnan(v)) \
        else f"{100 * v:.1f}"  # noqa: E731
    for r in rows:
        nzp = 100 * r["nonzero_params"] / r["params"] if r["params"] else 0
        mem = r["peak_memory_mb"]
        lines.append(
            f"{r['variant']:<22}{r['params']:>11,}{nzp:>6.1f}{r['macs'] / 1e6:>9.1f}"
            f"{r['size_mb']:>9.2f}{pct(r['size_reduction']):>6}{pct(r['top1']):>7}"
            f"{pct(r['top5']):>7}{r['latency_ms_b1']:>8.2f}{r['latency_ms_b64']:>9.1f}"
            f"{r['speedup_b1']:>6.2f}{r['speedup_b64']:>6.2f}"
            f"{'' if math.isnan(mem) else f'{mem:.0f}':>7}")
    return "\n".join(lines)
