"""Promised against delivered: the miss rate of each selection rule against the sacrifice
level, from ``RUN/results/guarantee.csv`` (``scripts.bench_guarantee``).

Left: the share of resampled val splits whose deployed answer lost more than s against the
reference on the population, with its 95 % interval, per rule, and the certified rule's risk
delta as a line (the promise). Right: the median expected speedup over the reference, per
rule (the price of the promise).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from reports.style import new_figure, save_figure, shared_legend

RULE_COLORS = {"estimate": "tab:orange", "certified": "tab:blue"}
ZOO_STYLE = {"all": "-", "base": "--"}


def plot_guarantee(rows: Sequence[Mapping[str, Any]], path: str | Path) -> tuple[Path, Path]:
    """Write the figure (PNG) and its data (CSV) to ``path``."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError("no guarantee rows to plot; run `python -m scripts.bench_guarantee`")
    for c in ("sacrifice", "miss_rate", "miss_lo", "miss_hi", "median_speedup", "delta"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    fig, axes = new_figure(9.0, 3.6, 1, 2)
    miss, speed = axes[0]
    for (zoo, rule), g in df.groupby(["zoo", "rule"], sort=False):
        g = g.sort_values("sacrifice")
        x = 100 * g["sacrifice"].to_numpy()
        y = 100 * g["miss_rate"].to_numpy()
        err = np.vstack([y - 100 * g["miss_lo"].to_numpy(), 100 * g["miss_hi"].to_numpy() - y])
        kw = dict(color=RULE_COLORS.get(rule), linestyle=ZOO_STYLE.get(zoo, ":"), marker="o",
                  label=f"{rule} (zoo {zoo})")
        miss.errorbar(x, y, yerr=err, capsize=3, **kw)
        speed.plot(x, g["median_speedup"], **kw)
    delta = float(df["delta"].dropna().iloc[0])
    miss.axhline(100 * delta, color="black", linewidth=1.0, linestyle="--",
                 label=f"promised: at most delta = {100 * delta:g}%")
    miss.set_xlabel("sacrifice level s (points)")
    miss.set_ylabel("draws whose answer lost more than s (%)")
    miss.set_title("promised vs delivered: miss rate")
    miss.set_ylim(bottom=0)
    speed.set_xlabel("sacrifice level s (points)")
    speed.set_ylabel("median expected speedup over the reference (x)")
    speed.set_title("the price of the promise")
    shared_legend(fig, [miss, speed])
    return save_figure(fig, path, df)
