"""Curves against the sacrifice level from ``results/routers.csv``: accuracy, precision, recall
and F1 on test; measured seconds and images/s; the share of test images sent to each model.
Families, rows and line styles: ``reports.routers_common``."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import seaborn as sns

from reports import style
from reports.inputs import DEFAULT_ZOO, zoo_rows
from reports.routers_common import METRIC_LABELS, METRICS, REFERENCE_ROWS, SACRIFICE_LABEL, \
    SAME_AS_ORACLE, data_columns, draw_methods, level_axis, mark_selected, method_order, \
    need_rows, reference_lines, routed_rows, target_line, timing_note


@dataclass
class SacrificeMetricsDisplay:
    """Accuracy, precision, recall and F1 against sacrifice for every routed method."""

    frame: pd.DataFrame
    metrics: tuple[str, ...] = METRICS

    @classmethod
    def from_routers(cls, frame: pd.DataFrame,
                     zoo: str | None = DEFAULT_ZOO) -> "SacrificeMetricsDisplay":
        frame = zoo_rows(frame, zoo)
        metrics = tuple(m for m in METRICS if m in frame.columns)
        need_rows(routed_rows(frame), "metrics against sacrifice")
        return cls(frame, metrics)

    @property
    def data_(self) -> pd.DataFrame:
        keep = ["method", "family", "sacrifice", *self.metrics]
        keep += [c for c in ("target_accuracy", "budget_held") if c in self.frame.columns]
        refs = self.frame[self.frame["family"].isin(REFERENCE_ROWS)]
        return pd.concat([self._rows(), refs])[data_columns(self.frame, keep)]

    def _rows(self) -> pd.DataFrame:
        rows = routed_rows(self.frame)
        return rows[~rows["family"].isin(SAME_AS_ORACLE)]

    def plot(self) -> "SacrificeMetricsDisplay":
        n = len(self.metrics)
        ncols = min(n, 2)
        nrows = math.ceil(n / ncols)
        fig, axes = style.new_figure(4.3 * ncols + 2.8, 3.1 * nrows, nrows, ncols)
        rows = self._rows()
        for ax, metric in zip(axes.ravel(), self.metrics):
            xmap = level_axis(ax, self.frame)
            draw_methods(ax, rows, "sacrifice", metric, scale=100.0, xmap=xmap)
            reference_lines(ax, self.frame, metric, scale=100.0, xmap=xmap)
            mark_selected(ax, self.frame, "sacrifice", metric, scale=100.0, xmap=xmap)
            if metric == "accuracy":
                target_line(ax, self.frame, xmap=xmap)
            ax.set_xlabel(SACRIFICE_LABEL)
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_title(f"{metric} on test vs sacrifice")
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        style.shared_legend(fig, axes.ravel()[:n])
        fig.suptitle("Quality on test at each sacrifice level (policies fitted on val)",
                     fontsize=10)
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class TimeDisplay:
    """Measured seconds and images/s against sacrifice (timed rows only)."""

    frame: pd.DataFrame

    @classmethod
    def from_routers(cls, frame: pd.DataFrame, zoo: str | None = DEFAULT_ZOO) -> "TimeDisplay":
        frame = zoo_rows(frame, zoo)
        for col in ("seconds", "images_per_second"):
            if col not in frame.columns:
                raise ValueError(f"routers.csv lacks column {col!r}; re-run `evaluate-routers`")
        rows = routed_rows(frame).dropna(subset=["images_per_second"])
        need_rows(rows, "time against sacrifice (no routed row was timed)")
        return cls(frame)

    @property
    def data_(self) -> pd.DataFrame:
        keep = ["method", "family", "sacrifice", "seconds", "images_per_second"]
        keep += [c for c in ("speedup_vs_best", "speedup_vs_cheapest_single", "router_seconds",
                             "wasted_seconds", "overhead_share", "timing_samples", "threads")
                 if c in self.frame.columns]
        refs = self.frame[self.frame["family"].isin(REFERENCE_ROWS)]
        timed = routed_rows(self.frame).dropna(subset=["images_per_second"])
        return pd.concat([timed, refs.dropna(subset=["images_per_second"])])[
            data_columns(self.frame, keep)]

    def plot(self) -> "TimeDisplay":
        fig, axes = style.new_figure(11.5, 3.8, 1, 2)
        rows = routed_rows(self.frame).dropna(subset=["images_per_second"])
        n_note = timing_note(self.frame)
        for ax, col, label in ((axes[0, 0], "seconds", f"seconds for {n_note}"),
                               (axes[0, 1], "images_per_second", "images / s")):
            xmap = level_axis(ax, self.frame)
            draw_methods(ax, rows, "sacrifice", col, xmap=xmap)
            reference_lines(ax, self.frame, col, xmap=xmap)
            mark_selected(ax, self.frame, "sacrifice", col, xmap=xmap)
            ax.set_xlabel(SACRIFICE_LABEL)
            ax.set_ylabel(label)
            values = pd.concat([rows[col], self.data_[col]])
            if style.log_scale_if_wide(ax, values, "y"):
                ax.set_ylabel(f"{label} (log scale)")
            else:
                ax.set_ylim(bottom=0)
            style.human_axis(ax, "y", None if col == "images_per_second" else "{:g}".format)
        axes[0, 0].set_title("measured time (lower is faster)")
        axes[0, 1].set_title("measured throughput (higher is faster)")
        style.shared_legend(fig, axes.ravel())
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class SharesDisplay:
    """Stacked share of test images sent to each model, per policy and sacrifice level."""

    shares: pd.DataFrame   # tidy: method, sacrifice, model, share (0-100 within each row)
    models: list[str] = field(default_factory=list)   # in routers.csv order (cheapest first)

    @classmethod
    def from_routers(cls, frame: pd.DataFrame, zoo: str | None = DEFAULT_ZOO) -> "SharesDisplay":
        frame = zoo_rows(frame, zoo)
        cols = [c for c in frame.columns if c.startswith("share_")]
        if not cols:
            raise ValueError("routers.csv has no share_<model> columns; re-run "
                             "`evaluate-routers`")
        rows = routed_rows(frame)
        # executed oracles and cost-matched random baselines repeat another row's shares
        rows = rows[~rows["family"].isin((*SAME_AS_ORACLE, "random"))]
        need_rows(rows, "model shares")
        values = rows[cols].fillna(0.0).to_numpy(dtype=float)
        totals = values.sum(axis=1, keepdims=True)
        pct = np.divide(100.0 * values, totals, out=np.zeros_like(values), where=totals > 0)
        models = [c[len("share_"):] for c in cols]
        tidy = [{"method": m, "family": f, "sacrifice": s, "model": models[j], "share": pct[i, j]}
                for i, (m, f, s) in enumerate(zip(rows["method"], rows["family"],
                                                  rows["sacrifice"]))
                for j in range(len(models))]
        return cls(pd.DataFrame(tidy), models)

    @property
    def data_(self) -> pd.DataFrame:
        return self.shares

    def plot(self) -> "SharesDisplay":
        pairs = method_order(self.shares)
        methods = [m for m, _ in pairs]
        ncols = min(len(methods), 3)
        nrows = math.ceil(len(methods) / ncols)
        fig, axes = style.new_figure(3.5 * ncols + 2.6, 2.5 * nrows + 0.5, nrows, ncols,
                                     sharey=True)
        palette = sns.color_palette("tab10" if len(self.models) <= 10 else "tab20",
                                    len(self.models))
        colours = dict(zip(self.models, palette))
        for ax, (method, family) in zip(axes.ravel(), pairs):
            part = self.shares[self.shares["method"] == method]
            table = part.pivot_table(index="sacrifice", columns="model", values="share",
                                     sort=True).reindex(columns=self.models).fillna(0.0)
            bottom = np.zeros(len(table))
            x = np.arange(len(table))
            for model in self.models:
                ax.bar(x, table[model].to_numpy(), bottom=bottom, color=colours[model],
                       label=model, width=0.8, edgecolor="white", linewidth=0.3)
                bottom += table[model].to_numpy()
            ax.set_xticks(x, [f"{100 * s:g}%" for s in table.index])
            kind = " (label oracle)" if family == "oracle" else ""
            ax.set_title(f"{method}{kind}")
            ax.set_xlabel("sacrifice s")
            ax.set_ylabel("% of test images")
            ax.set_ylim(0, 100)
        for ax in axes.ravel()[len(methods):]:
            ax.set_visible(False)
        handles, labels = axes.ravel()[0].get_legend_handles_labels()
        fig.legend(handles[::-1], labels[::-1], loc="outside right upper",
                   title="model (costliest on top)", fontsize=7)
        fig.suptitle("Which models each policy sends the test images to", fontsize=10)
        self.axes_, self.figure_ = axes, fig
        return self
