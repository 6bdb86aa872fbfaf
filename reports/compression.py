"""Compression figures from ``results/compression.csv``, ``prune_sweep.csv``, ``weight_hist.csv``.

The baseline of a variant is the row whose ``variant`` equals that variant's ``base``; each bar
is annotated with its value as % of that baseline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns

from reports import style

BAR_METRICS = {"size_mb": "size (MB)", "params": "parameters", "nonzero_params": "non-zero params",
               "macs": "MACs per image (counted)", "latency_ms_b1": "latency, batch 1 (ms)",
               "latency_ms_b64": "latency, batch 64 (ms)", "top1": "top-1 accuracy"}
DEFAULT_BARS = ("size_mb", "params", "macs", "latency_ms_b1", "top1")


@dataclass
class CompressionBarsDisplay:
    """One panel per metric, one bar per variant, each annotated with % of its baseline."""

    data: pd.DataFrame  # tidy: variant, base, metric, value, percent_of_base

    @classmethod
    def from_frame(cls, frame: pd.DataFrame,
                   metrics: tuple[str, ...] = DEFAULT_BARS) -> "CompressionBarsDisplay":
        metrics = tuple(m for m in metrics if m in frame.columns)
        if frame.empty or not metrics:
            raise ValueError(f"compression.csv has no rows or none of the columns {DEFAULT_BARS}")
        frame = frame.assign(variant=frame["variant"].astype(str), base=frame["base"].astype(str))
        base_rows = frame[frame["variant"] == frame["base"]].drop_duplicates("variant")
        base_rows = base_rows.set_index("variant")
        rows = []
        for _, r in frame.iterrows():
            for m in metrics:
                value = pd.to_numeric(r[m], errors="coerce")
                ref = (pd.to_numeric(base_rows.at[r["base"], m], errors="coerce")
                       if r["base"] in base_rows.index else np.nan)
                pct = 100.0 * value / ref if np.isfinite(ref) and ref != 0 else np.nan
                rows.append({"variant": r["variant"], "base": r["base"], "metric": m,
                             "value": float(value), "percent_of_base": float(pct)})
        return cls(pd.DataFrame(rows))

    @property
    def data_(self) -> pd.DataFrame:
        return self.data

    def plot(self) -> "CompressionBarsDisplay":
        metrics = list(dict.fromkeys(self.data["metric"]))
        variants = list(dict.fromkeys(self.data["variant"]))
        ncols = min(len(metrics), 3)
        nrows = math.ceil(len(metrics) / ncols)
        fig, axes = style.new_figure(4.0 * ncols, 0.6 + max(2.4, 0.28 * len(variants) + 1.0) * nrows,
                                     nrows, ncols)
        for ax, metric in zip(axes.ravel(), metrics):
            part = self.data[self.data["metric"] == metric]
            is_base = (part["variant"] == part["base"]).to_numpy()
            colours = ["dimgray" if b else "tab:blue" for b in is_base]
            ax.barh(part["variant"], part["value"], color=colours)
            for y, (v, p) in enumerate(zip(part["value"], part["percent_of_base"])):
                if np.isfinite(p):
                    ax.annotate(f"{p:.0f}%", (v, y), xytext=(2, 0), textcoords="offset points",
                                va="center", fontsize=6)
            ax.invert_yaxis()
            ax.set_title(BAR_METRICS.get(metric, metric))
            ax.margins(x=0.18)
        for ax in axes.ravel()[len(metrics):]:
            ax.set_visible(False)
        fig.suptitle("Compressed variants vs baseline (grey); labels = % of baseline", fontsize=10)
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class PruneSweepDisplay:
    """Accuracy and throughput against pruning level, one line per pruning method."""

    frame: pd.DataFrame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "PruneSweepDisplay":
        if frame.empty:
            raise ValueError("prune_sweep.csv has no rows; re-run `compress`")
        return cls(frame.sort_values(["method", "level"], kind="stable"))

    @property
    def data_(self) -> pd.DataFrame:
        return self.frame[["method", "level", "accuracy", "images_per_second"]]

    def plot(self) -> "PruneSweepDisplay":
        fig, axes = style.new_figure(9.0, 3.4, 1, 2)
        for ax, col, title in ((axes[0, 0], "accuracy", "accuracy"),
                               (axes[0, 1], "images_per_second", "images / s (measured)")):
            sns.lineplot(self.frame, x="level", y=col, hue="method", markers=True,
                         style="method", dashes=False, ax=ax, legend=col == "accuracy")
            ax.set_xlabel("pruning level")
            ax.set_ylabel(title)
            ax.set_title(f"{title} vs pruning level")
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class WeightHistDisplay:
    """Weight-value histograms, one small multiple per variant (log counts)."""

    frame: pd.DataFrame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "WeightHistDisplay":
        if frame.empty:
            raise ValueError("weight_hist.csv has no rows; re-run `compress`")
        bad = frame[frame["bin_right"] < frame["bin_left"]]
        if not bad.empty:
            raise ValueError(f"weight_hist.csv has {len(bad)} bins with bin_right < bin_left")
        return cls(frame)

    @property
    def data_(self) -> pd.DataFrame:
        return self.frame[["variant", "bin_left", "bin_right", "count"]]

    def plot(self) -> "WeightHistDisplay":
        variants = list(dict.fromkeys(self.frame["variant"].astype(str)))
        ncols = min(len(variants), 3)
        nrows = math.ceil(len(variants) / ncols)
        fig, axes = style.new_figure(3.4 * ncols, 2.4 * nrows + 0.4, nrows, ncols)
        for ax, variant in zip(axes.ravel(), variants):
            part = self.frame[self.frame["variant"].astype(str) == variant]
            ax.bar(part["bin_left"], part["count"], width=part["bin_right"] - part["bin_left"],
                   align="edge", color="tab:blue", edgecolor="none")
            if (part["count"] > 0).any():
                ax.set_yscale("log")
            ax.set_title(variant)
            ax.set_xlabel("weight value")
            ax.set_ylabel("count")
        for ax in axes.ravel()[len(variants):]:
            ax.set_visible(False)
        fig.suptitle("Weight-value histograms per variant", fontsize=10)
        self.axes_, self.figure_ = axes, fig
        return self
