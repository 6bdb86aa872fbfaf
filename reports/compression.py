"""Compression figures from ``results/compression.csv``, ``prune_sweep.csv``, ``weight_hist.csv``.

``compress`` writes its baseline as the row whose ``variant`` is ``base`` (older tables named
it after the base model itself); every other row's ``base`` column names that model. Each bar
is annotated with its value and its % of the baseline.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd
import seaborn as sns

from reports import style

BAR_METRICS = {"size_mb": "checkpoint size (MB)", "params": "parameters",
               "nonzero_params": "non-zero parameters", "macs": "MACs per image (counted)",
               "latency_ms_b1": "latency, batch 1 (ms)",
               "images_per_second_b64": "throughput, batch 64 (images/s)",
               "latency_ms_b64": "latency, batch 64 (ms per batch)",
               "top1": "top-1 accuracy on test (%)"}
DEFAULT_BARS = ("size_mb", "params", "nonzero_params", "macs", "latency_ms_b1",
                "images_per_second_b64", "top1")
HIGHER_IS_BETTER = ("images_per_second_b64", "top1")
_STRUCT = re.compile(r"struct-(l1|l2)-(\d{1,2})(?:-.*)?")
_UNSTRUCT = re.compile(r"unstruct-(\d{1,2})")


def baseline_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The baseline row of each base model, indexed by the base model's name."""
    frame = frame.assign(variant=frame["variant"].astype(str), base=frame["base"].astype(str))
    rows = frame[(frame["variant"] == "base") | (frame["variant"] == frame["base"])]
    return rows.drop_duplicates("base").set_index("base")


def is_baseline(frame: pd.DataFrame) -> np.ndarray:
    v, b = frame["variant"].astype(str), frame["base"].astype(str)
    return ((v == "base") | (v == b)).to_numpy()


@dataclass
class CompressionBarsDisplay:
    """One panel per metric, one bar per variant, each annotated with % of its baseline;
    accuracy as points on a zoomed axis (bars from 0 would hide the differences)."""

    data: pd.DataFrame  # tidy: variant, base, metric, value, percent_of_base

    @classmethod
    def from_frame(cls, frame: pd.DataFrame,
                   metrics: tuple[str, ...] = DEFAULT_BARS) -> "CompressionBarsDisplay":
        metrics = tuple(m for m in metrics if m in frame.columns
                        and pd.to_numeric(frame[m], errors="coerce").notna().any())
        if frame.empty or not metrics:
            raise ValueError(f"compression.csv has no rows or no values in any of {DEFAULT_BARS}")
        base_rows = baseline_rows(frame)
        rows = []
        for _, r in frame.iterrows():
            base = str(r["base"])
            for m in metrics:
                value = float(pd.to_numeric(r[m], errors="coerce"))
                ref = (float(pd.to_numeric(base_rows.at[base, m], errors="coerce"))
                       if base in base_rows.index else np.nan)
                pct = 100.0 * value / ref if np.isfinite(ref) and ref != 0 else np.nan
                rows.append({"variant": str(r["variant"]), "base": base, "metric": m,
                             "value": value, "percent_of_base": pct})
        return cls(pd.DataFrame(rows))

    @property
    def data_(self) -> pd.DataFrame:
        return self.data

    def _labels(self, part: pd.DataFrame) -> list[str]:
        return [f"{b} (baseline)" if v in ("base", b) else v
                for v, b in zip(part["variant"], part["base"])]

    def plot(self) -> "CompressionBarsDisplay":
        metrics = list(dict.fromkeys(self.data["metric"]))
        variants = list(dict.fromkeys(self.data["variant"]))
        ncols = min(len(metrics), 4)
        nrows = math.ceil(len(metrics) / ncols)
        fig, axes = style.new_figure(3.6 * ncols + 1.0,
                                     0.7 + max(2.2, 0.27 * len(variants) + 1.0) * nrows,
                                     nrows, ncols, sharey=True)
        for ax, metric in zip(axes.ravel(), metrics):
            part = self.data[self.data["metric"] == metric]
            base = (part["variant"] == "base") | (part["variant"] == part["base"])
            y = np.arange(len(part))
            if metric == "top1":
                self._accuracy_panel(ax, part, base.to_numpy(), y)
            else:
                colours = ["dimgray" if b else "tab:blue" for b in base]
                ax.barh(y, part["value"], color=colours)
                for yi, v, p, b in zip(y, part["value"], part["percent_of_base"], base):
                    if not np.isfinite(v):
                        continue
                    text = style.human(v) + ("" if b or not np.isfinite(p) else f"  {p:.0f}%")
                    ax.annotate(text, (v, yi), xytext=(2, 0), textcoords="offset points",
                                va="center", fontsize=6.5)
                ax.margins(x=0.35)
                ax.set_xlim(left=0)
                style.human_axis(ax, "x")
            ax.set_yticks(y, self._labels(part))
            ax.set_title(BAR_METRICS.get(metric, metric)
                         + (" (higher is better)" if metric in HIGHER_IS_BETTER else ""),
                         fontsize=8.5)
        axes[0, 0].invert_yaxis()
        for ax in axes.ravel()[len(metrics):]:
            ax.set_visible(False)
        fig.suptitle("Compressed variants against their baseline (grey); each label: value and "
                     "% of the baseline", fontsize=10)
        self.axes_, self.figure_ = axes, fig
        return self

    @staticmethod
    def _accuracy_panel(ax: Any, part: pd.DataFrame, base: np.ndarray, y: np.ndarray,
                        window: float = 15.0) -> None:
        """Points on a zoomed axis; a variant more than ``window`` points below the baseline
        (a broken one) sits on the left edge as a triangle, its value still printed."""
        acc = 100 * part["value"].to_numpy(dtype=float)
        ref = acc[base][0] if base.any() else np.nan
        finite = acc[np.isfinite(acc)]
        if not len(finite):
            return
        lo = max(finite.min(), ref - window) if np.isfinite(ref) else finite.min()
        hi = finite.max()
        pad = max(0.5, 0.08 * (hi - lo))
        left = lo - pad
        off = np.isfinite(acc) & (acc < left)
        shown = np.where(off, left, acc)
        colours = np.array(["dimgray" if b else "tab:blue" for b in base])
        ax.scatter(shown[~off], y[~off], color=colours[~off], zorder=3)
        if off.any():
            ax.scatter(shown[off], y[off], color=colours[off], marker="<", zorder=3,
                       clip_on=False)
        if np.isfinite(ref):
            ax.axvline(ref, color="dimgray", linestyle="--", linewidth=1)
        for yi, a, x, b, o in zip(y, acc, shown, base, off):
            if np.isfinite(a):
                delta = "" if b or not np.isfinite(ref) else f" ({a - ref:+.1f})"
                ax.annotate(f"{a:.1f}{delta}" + (", off scale" if o else ""), (x, yi),
                            xytext=(4, 0), textcoords="offset points", va="center",
                            fontsize=6.5)
        ax.set_xlim(left, hi + 4 * pad)
        ax.set_xlabel("% (points vs baseline in brackets)")


@dataclass
class PruneSweepDisplay:
    """Accuracy and throughput against pruning level, one line per pruning method."""

    frame: pd.DataFrame
    source: str = "prune_sweep.csv"

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "PruneSweepDisplay":
        if frame.empty:
            raise ValueError("prune_sweep.csv has no rows; re-run `compress --sweep`")
        return cls(frame.sort_values(["method", "level"], kind="stable"))

    @classmethod
    def from_compression(cls, frame: pd.DataFrame) -> "PruneSweepDisplay":
        """The pruned variants of compression.csv (``struct-l1-30``, ``unstruct-30``, ...)
        with their baseline at level 0: the fine-tuned points, where no sweep was run."""
        if "top1" not in frame.columns:
            raise ValueError("compression.csv has no top1 column to draw pruning levels from")
        f = frame.reset_index(drop=True).assign(variant=lambda d: d["variant"].astype(str),
                                                base=lambda d: d["base"].astype(str))
        if "images_per_second_b64" in f.columns:
            f["ips"] = pd.to_numeric(f["images_per_second_b64"], errors="coerce")
        elif "latency_ms_b64" in f.columns:   # ms per batch of 64
            f["ips"] = 64000.0 / pd.to_numeric(f["latency_ms_b64"], errors="coerce")
        else:
            f["ips"] = np.nan
        f["top1"] = pd.to_numeric(f["top1"], errors="coerce")
        base_of = {r["base"]: r for _, r in f[is_baseline(f)].iterrows()}
        rows = []
        for _, r in f.iterrows():
            m, u = _STRUCT.fullmatch(r["variant"]), _UNSTRUCT.fullmatch(r["variant"])
            if not (m or u):
                continue
            method = f"structured {m.group(1).upper()} (filters)" if m else "unstructured (weights)"
            level = int(m.group(2) if m else u.group(1)) / 100
            rows.append({"method": method, "level": level, "accuracy": r["top1"],
                         "images_per_second": r["ips"], "variant": r["variant"]})
            if r["base"] in base_of:
                b = base_of[r["base"]]
                rows.append({"method": method, "level": 0.0, "accuracy": b["top1"],
                             "images_per_second": b["ips"], "variant": b["variant"]})
        if not rows:
            raise ValueError("compression.csv has no pruned variant (struct-*/unstruct-*) and "
                             "there is no prune_sweep.csv; run `compress --sweep`")
        out = pd.DataFrame(rows).drop_duplicates(["method", "level"])
        return cls(out.sort_values(["method", "level"], kind="stable"),
                   source="compression.csv: fine-tuned variants")

    @property
    def data_(self) -> pd.DataFrame:
        keep = [c for c in ("method", "level", "accuracy", "images_per_second", "variant")
                if c in self.frame.columns]
        return self.frame[keep]

    def plot(self) -> "PruneSweepDisplay":
        fig, axes = style.new_figure(10.0, 3.6, 1, 2)
        shown = self.frame.assign(level=100 * self.frame["level"],
                                  accuracy=100 * self.frame["accuracy"])
        for ax, col, title in ((axes[0, 0], "accuracy", "top-1 accuracy on test (%)"),
                               (axes[0, 1], "images_per_second",
                                "throughput (images/s, batch 64)")):
            if shown[col].notna().any():
                sns.lineplot(shown, x="level", y=col, hue="method", markers=True,
                             style="method", dashes=False, ax=ax, legend=col == "accuracy")
            ax.set_xlabel("pruning level (% of filters or weights removed)")
            ax.set_ylabel(title)
            ax.set_title(f"{title.split(' (')[0]} vs pruning level")
        style.human_axis(axes[0, 1], "y")
        leg = axes[0, 0].get_legend()
        if leg:
            sns.move_legend(axes[0, 0], "lower left", fontsize=7, title="")
        fig.suptitle(f"Pruning level against accuracy and speed (from {self.source})",
                     fontsize=10)
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class WeightHistDisplay:
    """Weight-value histograms, one small multiple per variant (log counts, shared x)."""

    frame: pd.DataFrame
    baselines: frozenset[str] = frozenset({"base"})   # variant names drawn grey

    @classmethod
    def from_frame(cls, frame: pd.DataFrame,
                   baselines: Iterable[str] = ("base",)) -> "WeightHistDisplay":
        if frame.empty:
            raise ValueError("weight_hist.csv has no rows; re-run `compress`")
        bad = frame[frame["bin_right"] < frame["bin_left"]]
        if not bad.empty:
            raise ValueError(f"weight_hist.csv has {len(bad)} bins with bin_right < bin_left")
        return cls(frame, frozenset(str(b) for b in baselines))

    @property
    def data_(self) -> pd.DataFrame:
        return self.frame[["variant", "bin_left", "bin_right", "count"]]

    def plot(self) -> "WeightHistDisplay":
        variants = list(dict.fromkeys(self.frame["variant"].astype(str)))
        ncols = min(len(variants), 3)
        nrows = math.ceil(len(variants) / ncols)
        fig, axes = style.new_figure(3.4 * ncols, 2.3 * nrows + 0.5, nrows, ncols,
                                     sharex=True, sharey=True)
        for ax, variant in zip(axes.ravel(), variants):
            part = self.frame[self.frame["variant"].astype(str) == variant]
            ax.bar(part["bin_left"], part["count"], width=part["bin_right"] - part["bin_left"],
                   align="edge", color="dimgray" if variant in self.baselines else "tab:blue",
                   edgecolor="none")
            if (part["count"] > 0).any():
                ax.set_yscale("log")
            ax.set_title(variant, fontsize=8.5)
            ax.set_xlabel("weight value")
            ax.set_ylabel("count (log)")
        for ax in axes.ravel()[len(variants):]:
            ax.set_visible(False)
        fig.suptitle("Weight values of every conv and linear layer, per variant (dequantized; "
                     "bins span the baseline's range, the two outer bins hold everything beyond)",
                     fontsize=9)
        self.axes_, self.figure_ = axes, fig
        return self
