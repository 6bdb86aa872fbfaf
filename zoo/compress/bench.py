"""The issue's "what it must reach" targets, measured in one run and judged honestly.

Cost targets (torchvision ``vgg19`` at 224, random weights, cost-only mode, big batch 8,
2 threads): ``int8-static`` >= 2x and ``prune+int8`` >= 2.7x faster than fp32 at the big batch;
files as % of fp32: ``int8-dynamic`` <= 36, ``int8-static`` <= 26, ``qat4`` <= 14.
Accuracy targets (a trained run's ``compression.csv``): every quantized variant (``int8-dynamic``,
``int8-static``, ``qat8``, ``qat4``) within 0.5 points of its base's top-1, structured 30%
pruning (``struct-*-30*`` and ``prune+int8`` at its default 30%) within 1 point.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from common.io import read_csv, write_csv

COST_VARIANTS = ["int8-dynamic", "int8-static", "qat4", "struct-l1-30", "prune+int8"]
SPEEDUP_TARGETS = {"int8-static": 2.0, "prune+int8": 2.7}          # x fp32, at the big batch
SIZE_TARGETS = {"int8-dynamic": 36.0, "int8-static": 26.0, "qat4": 14.0}   # % of fp32 file
QUANTIZED = ("int8-dynamic", "int8-static", "qat8", "qat4")
QUANT_POINTS, STRUCT_POINTS = 0.5, 1.0
TARGET_COLUMNS = ["name", "value", "op", "limit", "unit", "ok", "note"]


@dataclass
class Target:
    """One target: ``value op limit`` (``op`` is ">=" or "<="), judged in ``ok``."""

    name: str
    value: float
    op: str
    limit: float
    unit: str
    ok: bool
    note: str = ""

    def line(self) -> str:
        v = "n/a" if math.isnan(self.value) else f"{self.value:.2f}"
        verdict = "PASS" if self.ok else "FAIL"
        return (f"{verdict}  {self.name:<34} {v:>8} {self.unit:<9} (target {self.op} "
                f"{self.limit:g}){'  ' + self.note if self.note else ''}")


def _judge(name: str, value: float, op: str, limit: float, unit: str, note: str = "") -> Target:
    ok = (not math.isnan(value)) and (value >= limit if op == ">=" else value <= limit)
    return Target(name, value, op, limit, unit, ok, note)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def cost_targets(rows: list[dict[str, Any]], base: str) -> list[Target]:
    """Speedup (big-batch latency) and file-size targets of one base's compression rows."""
    by = {r["variant"]: r for r in rows if r.get("base") == base}
    if base not in by:
        raise ValueError(f"no row for base {base!r} in the compression table; run "
                         f"`compress --base {base}` first")
    b = by[base]
    out = []
    for v, limit in SPEEDUP_TARGETS.items():
        r = by.get(v)
        value = _num(b["latency_ms_b64"]) / _num(r["latency_ms_b64"]) if r else float("nan")
        out.append(_judge(f"{v} speedup", value, ">=", limit, "x fp32",
                          "" if r else "variant not measured"))
    for v, limit in SIZE_TARGETS.items():
        r = by.get(v)
        value = 100.0 * _num(r["size_mb"]) / _num(b["size_mb"]) if r else float("nan")
        out.append(_judge(f"{v} size", value, "<=", limit, "% of fp32",
                          "" if r else "variant not measured"))
    return out


def _accuracy_limit(variant: str) -> float | None:
    from zoo.compress.variants import parse_variant
    if variant in QUANTIZED:
        return QUANT_POINTS
    try:
        spec = parse_variant(variant)
    except ValueError:
        return None
    if spec.method in ("struct", "prune+int8") and abs(spec.ratio - 0.3) < 1e-9:
        return STRUCT_POINTS
    return None


def accuracy_targets(rows: list[dict[str, Any]]) -> list[Target]:
    """Top-1 change (points) of each quantized / 30%-structured variant vs its base's row."""
    base_top1 = {r["base"]: _num(r["top1"]) for r in rows if r["variant"] == r["base"]}
    out = []
    for r in rows:
        if r["variant"] == r["base"]:
            continue
        limit = _accuracy_limit(r["variant"])
        if limit is None:
            continue
        b = base_top1.get(r["base"], float("nan"))
        delta = 100.0 * (_num(r["top1"]) - b)
        note = f"base {100 * b:.2f}% -> {100 * _num(r['top1']):.2f}%"
        if r["variant"] == "prune+int8":
            note += " (pruned and quantized: held to the structured bound)"
        out.append(_judge(f"{r['base']}-{r['variant']} accuracy", delta, ">=", -limit,
                          "points", note))
    return out


@dataclass
class BenchResult:
    targets: list[Target]
    cost_rows: list[dict[str, Any]]
    accuracy_csv: str | None


def run_bench(run: str | Path, *, accuracy_csv: str | Path | None, threads: int = 2,
              batch: int = 8, input_size: int = 224, weights: str | None = None,
              latency_runs: int = 5, batch_repeats: int = 3, progress: bool = True,
              log: Callable[[str], None] = print) -> BenchResult:
    """Measure the cost-only vgg19 table at ``batch`` into ``run`` and judge every target."""
    from zoo.compress.measure import MeasureSettings
    from zoo.compress.run import CompressConfig, result_paths, run_compress
    cfg = CompressConfig(
        run=str(run), base="vgg19", variants=COST_VARIANTS, weights=weights, threads=threads,
        input_size=input_size, num_classes=1000, finetune_epochs=0, calib_images=16,
        measure=MeasureSettings(threads=threads, big_batch=batch, latency_runs=latency_runs,
                                batch_repeats=batch_repeats, budget_s=10.0, memory=False),
        progress=progress, command=f"bench_compress --run {run}")
    log(f"bench: vgg19 at {input_size}, batch {batch}, {threads} threads, cost-only "
        f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores before timing)")
    res = run_compress(cfg, log=log)
    if not res.cost_only:
        raise ValueError(f"{run} holds a trained vgg19: use an empty --run for the cost benchmark")
    targets = cost_targets(res.rows, "vgg19")
    acc_rows: list[dict[str, Any]] = []
    if accuracy_csv is not None and Path(accuracy_csv).exists():
        acc_rows = read_csv(accuracy_csv)
        targets += accuracy_targets(acc_rows)
    elif accuracy_csv is not None:
        log(f"bench: {accuracy_csv} does not exist: accuracy targets not judged")
    write_csv(result_paths(Path(run) / "results", True)["compression"].with_name(
        "bench_targets.csv"), [asdict(t) for t in targets], TARGET_COLUMNS)
    return BenchResult(targets, res.rows, str(accuracy_csv) if acc_rows else None)
