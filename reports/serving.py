"""Latency against offered load, from ``RUN/results/serving.csv`` (``scripts.bench_serve``).

Left: p99 (solid) and p50 (dotted) latency per method against the offered request rate, with the
latency objective as a horizontal line; right: achieved against offered rate (the diagonal is
keeping up). One line per (backend, method); the data goes beside the PNG as CSV.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.ticker import NullLocator

from reports.style import human_axis, log_scale_if_wide, new_figure, save_figure, shared_legend

COLORS = {"best-single": "dimgray", "cheapest-single": "tab:olive", "selected": "crimson"}
BACKEND_STYLE = {"embedded": "-", "ray": "--"}


def plot_serving(rows: Sequence[Mapping[str, Any]], path: str | Path,
                 slo_ms: float | None = None) -> tuple[Path, Path]:
    """Write the figure (PNG) and its data (CSV) to ``path``."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError("no serving rows to plot; run `python -m scripts.bench_serve` first")
    for c in ("offered_rps", "achieved_rps", "p50_ms", "p99_ms"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    if slo_ms is None and "slo_ms" in df:
        slo_ms = float(pd.to_numeric(df["slo_ms"], errors="coerce").dropna().iloc[0])
    fig, axes = new_figure(9.0, 3.6, 1, 2)
    lat, thr = axes[0]
    for (backend, method), g in df.groupby(["backend", "method"], sort=False):
        g = g.sort_values("offered_rps")
        color = COLORS.get(method, None)
        style = BACKEND_STYLE.get(backend, "-.")
        label = f"{method} ({backend}: {g['served'].iloc[0]})" if "served" in g else method
        lat.plot(g["offered_rps"], g["p99_ms"], style, marker="o", color=color, label=label)
        lat.plot(g["offered_rps"], g["p50_ms"], ":", marker=".", color=color)
        thr.plot(g["offered_rps"], g["achieved_rps"], style, marker="o", color=color,
                 label=label)
    if slo_ms:
        lat.axhline(slo_ms, color="black", linewidth=1.0, linestyle="--",
                    label=f"objective: p99 {slo_ms:g} ms")
    rates = sorted(df["offered_rps"].dropna().unique())
    thr.plot(rates, rates, color="lightgray", linewidth=1.0, label="achieved = offered")
    for ax in (lat, thr):
        log_scale_if_wide(ax, rates)
        ax.set_xticks(rates)            # every offered rate labelled, no others
        ax.xaxis.set_minor_locator(NullLocator())
        human_axis(ax, "x")
        ax.set_xlabel("offered load (requests/s, Poisson arrivals)")
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms): p99 solid, p50 dotted")
    lat.set_title("latency against load")
    thr.set_ylabel("answered requests/s")
    thr.set_title("throughput against load")
    shared_legend(fig, [lat, thr])
    return save_figure(fig, path, df)
