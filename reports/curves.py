"""Curves from ``results/routers.csv`` and training histories.

Families in routers.csv: ``single`` and ``best-single`` rows are single models (points and
reference lines); ``ceiling`` is the per-sample oracle (a reference); the routed families
(oracle, oracle-executed, dispatcher, cascade, random) are curves over their sacrifice levels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns

from reports import style
from reports.inputs import model_of

SINGLE_FAMILIES = ("single", "best-single")
REFERENCE_FAMILIES = ("single", "best-single", "ceiling")
# oracle-executed rows carry the same predictions as their simulated oracle rows (only timed)
SAME_AS_ORACLE = ("oracle-executed",)
METRICS = ("accuracy", "precision", "recall", "f1")


def routed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of methods that have a sacrifice level (everything but single models and ceiling)."""
    rows = frame[~frame["family"].isin(REFERENCE_FAMILIES)].copy()
    rows = rows[rows["sacrifice"].notna()]
    return rows.sort_values(["method", "sacrifice"], kind="stable")


def best_single_row(frame: pd.DataFrame) -> pd.Series | None:
    """The ``best-single`` row (the reference model, most accurate on val), if written."""
    rows = frame[frame["family"] == "best-single"]
    return None if rows.empty else rows.iloc[0]


def ceiling_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["family"] == "ceiling"].sort_values("sacrifice", kind="stable")


def _percent_axis(ax: Any) -> None:
    ax.set_xlabel("sacrifice budget (% accuracy)")


def _reference_lines(ax: Any, frame: pd.DataFrame, column: str) -> None:
    """Best single model (horizontal) and the per-sample ceilings (a line, or a curve where a
    ceiling method has several sacrifice levels)."""
    best = best_single_row(frame)
    if best is not None and column in best and np.isfinite(best[column]):
        ax.axhline(best[column], label=f"best single ({model_of(best)})",
                   **style.REFERENCE_STYLE["best-single"])
    if column not in frame.columns:
        return
    for method, part in ceiling_rows(frame).groupby("method", sort=False):
        vals = part[["sacrifice", column]].dropna()
        if vals.empty:
            continue
        if vals["sacrifice"].nunique() > 1:
            ax.plot(100 * vals["sacrifice"], vals[column], marker="*", label=f"{method} (bound)",
                    **{**style.REFERENCE_STYLE["ceiling"], "linestyle": "-."})
        else:
            ax.axhline(float(vals[column].iloc[0]), label=f"{method} (bound)",
                       **style.REFERENCE_STYLE["ceiling"])


def _need_rows(frame: pd.DataFrame, what: str) -> None:
    if frame.empty:
        raise ValueError(f"routers.csv has no routed rows (families other than "
                         f"{list(REFERENCE_FAMILIES)}) to draw {what}; re-run `evaluate-routers`")


@dataclass
class SacrificeMetricsDisplay:
    """Accuracy, precision, recall and F1 against sacrifice for every routed method."""

    frame: pd.DataFrame
    metrics: tuple[str, ...] = METRICS

    @classmethod
    def from_routers(cls, frame: pd.DataFrame) -> "SacrificeMetricsDisplay":
        metrics = tuple(m for m in METRICS if m in frame.columns)
        _need_rows(routed_rows(frame), "metrics against sacrifice")
        return cls(frame, metrics)

    @property
    def data_(self) -> pd.DataFrame:
        keep = ["method", "family", "sacrifice", *self.metrics]
        refs = self.frame[self.frame["family"].isin(("best-single", "ceiling"))]
        return pd.concat([self._rows(), refs])[keep]

    def _rows(self) -> pd.DataFrame:
        rows = routed_rows(self.frame)
        return rows[~rows["family"].isin(SAME_AS_ORACLE)]

    def plot(self) -> "SacrificeMetricsDisplay":
        n = len(self.metrics)
        ncols = min(n, 2)
        fig, axes = style.new_figure(4.2 * ncols + 1.6, 3.0 * math.ceil(n / ncols),
                                     math.ceil(n / ncols), ncols)
        rows = self._rows().assign(level=lambda d: 100 * d["sacrifice"])
        for ax, metric in zip(axes.ravel(), self.metrics):
            sns.lineplot(rows, x="level", y=metric, hue="method", style="family",
                         markers=True, dashes=False, ax=ax, legend=ax is axes.ravel()[0])
            _reference_lines(ax, self.frame, metric)
            _percent_axis(ax)
            ax.set_title(f"{metric} (test) vs sacrifice")
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        handles, labels = [], []
        for ax in axes.ravel()[:n]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
            if ax.get_legend():
                ax.get_legend().remove()
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class TimeDisplay:
    """Seconds for the test set and images/s against sacrifice."""

    frame: pd.DataFrame

    @classmethod
    def from_routers(cls, frame: pd.DataFrame) -> "TimeDisplay":
        for col in ("seconds", "images_per_second"):
            if col not in frame.columns:
                raise ValueError(f"routers.csv lacks column {col!r}; re-run `evaluate-routers`")
        _need_rows(routed_rows(frame), "time against sacrifice")
        return cls(frame)

    @property
    def data_(self) -> pd.DataFrame:
        keep = ["method", "family", "sacrifice", "seconds", "images_per_second"]
        refs = self.frame[self.frame["family"].isin(("best-single", "ceiling"))]
        return pd.concat([routed_rows(self.frame), refs])[keep]

    def plot(self) -> "TimeDisplay":
        fig, axes = style.new_figure(10.0, 3.4, 1, 2)
        rows = routed_rows(self.frame).assign(level=lambda d: 100 * d["sacrifice"])
        for ax, col, title in ((axes[0, 0], "seconds", "seconds for the test set"),
                               (axes[0, 1], "images_per_second", "images / s")):
            sns.lineplot(rows, x="level", y=col, hue="method", style="family", markers=True,
                         dashes=False, ax=ax, legend=col == "seconds")
            _reference_lines(ax, self.frame, col)
            _percent_axis(ax)
            ax.set_ylabel(title)
            ax.set_title(f"{title} vs sacrifice (measured)")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        h2, l2 = axes[0, 1].get_legend_handles_labels()
        for h, lab in zip(h2, l2):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
        if axes[0, 0].get_legend():
            axes[0, 0].get_legend().remove()
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class FrontierDisplay:
    """Accuracy against images/s: single models as points, routers as curves, the ceiling too."""

    frame: pd.DataFrame

    @classmethod
    def from_routers(cls, frame: pd.DataFrame) -> "FrontierDisplay":
        if frame[["accuracy", "images_per_second"]].dropna().empty:
            raise ValueError("routers.csv has no row with both accuracy and images_per_second")
        return cls(frame)

    @property
    def data_(self) -> pd.DataFrame:
        keep = ["method", "family", "sacrifice", "accuracy", "images_per_second"]
        return self.frame[keep].copy()

    def plot(self, ax: Any = None) -> "FrontierDisplay":
        if ax is None:
            fig, axes = style.new_figure(7.5, 4.6)
            ax = axes[0, 0]
        singles = self.frame[self.frame["family"].isin(SINGLE_FAMILIES)]
        singles = singles.assign(model=[model_of(r) for _, r in singles.iterrows()])
        best = best_single_row(self.frame)
        best_name = model_of(best) if best is not None else None
        singles = singles.drop_duplicates("model").assign(
            label=lambda d: d["model"].where(d["model"] != best_name, f"{best_name} (best single)"))
        ax.scatter(singles["images_per_second"], singles["accuracy"], color="dimgray",
                   marker="o", zorder=3, label="single models")
        for _, r in singles.iterrows():
            ax.annotate(str(r["label"]), (r["images_per_second"], r["accuracy"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        rows = routed_rows(self.frame).dropna(subset=["images_per_second", "accuracy"])
        if not rows.empty:
            sns.lineplot(rows, x="images_per_second", y="accuracy", hue="method",
                         style="family", markers=True, dashes=False, sort=False, ax=ax)
        ceil = ceiling_rows(self.frame)
        any_timed = not ceil.dropna(subset=["images_per_second", "accuracy"]).empty
        for method, part in ceil.groupby("method", sort=False):
            timed = part.dropna(subset=["images_per_second", "accuracy"])
            if not timed.empty:
                ax.plot(timed["images_per_second"], timed["accuracy"], marker="*", markersize=9,
                        label=f"{method} (bound)", **style.REFERENCE_STYLE["ceiling"])
            elif not any_timed and part["accuracy"].notna().any():
                ax.axhline(float(part["accuracy"].max()), label=f"{method} (bound, untimed)",
                           **style.REFERENCE_STYLE["ceiling"])
        positive = self.frame["images_per_second"].dropna()
        if (positive > 0).all() and len(positive) and positive.max() / positive.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel("images / s (measured, test set)")
        ax.set_ylabel("accuracy (test)")
        ax.set_title("Accuracy vs throughput")
        ax.legend(fontsize=6, loc="best")
        self.ax_, self.figure_ = ax, ax.figure
        return self


@dataclass
class SharesDisplay:
    """Stacked share of test images sent to each model, per policy and sacrifice level."""

    shares: pd.DataFrame   # tidy: method, sacrifice, model, share (0-100 within each row)
    models: list[str] = field(default_factory=list)

    @classmethod
    def from_routers(cls, frame: pd.DataFrame) -> "SharesDisplay":
        cols = [c for c in frame.columns if c.startswith("share_")]
        if not cols:
            raise ValueError("routers.csv has no share_<model> columns; re-run "
                             "`evaluate-routers`")
        rows = routed_rows(frame)
        rows = rows[~rows["family"].isin(SAME_AS_ORACLE)]
        _need_rows(rows, "model shares")
        values = rows[cols].fillna(0.0).to_numpy(dtype=float)
        totals = values.sum(axis=1, keepdims=True)
        pct = np.divide(100.0 * values, totals, out=np.zeros_like(values), where=totals > 0)
        models = [c[len("share_"):] for c in cols]
        tidy = [{"method": m, "sacrifice": s, "model": models[j], "share": pct[i, j]}
                for i, (m, s) in enumerate(zip(rows["method"], rows["sacrifice"]))
                for j in range(len(models))]
        return cls(pd.DataFrame(tidy), models)

    @property
    def data_(self) -> pd.DataFrame:
        return self.shares

    def plot(self) -> "SharesDisplay":
        methods = list(dict.fromkeys(self.shares["method"]))
        ncols = min(len(methods), 3)
        nrows = math.ceil(len(methods) / ncols)
        fig, axes = style.new_figure(3.6 * ncols + 1.4, 2.8 * nrows, nrows, ncols, sharey=True)
        colours = dict(zip(self.models, sns.color_palette("viridis", len(self.models))))
        for ax, method in zip(axes.ravel(), methods):
            part = self.shares[self.shares["method"] == method]
            table = part.pivot_table(index="sacrifice", columns="model", values="share",
                                     sort=True)[self.models]
            bottom = np.zeros(len(table))
            x = np.arange(len(table))
            for model in self.models:
                ax.bar(x, table[model].to_numpy(), bottom=bottom, color=colours[model],
                       label=model, width=0.8)
                bottom += table[model].to_numpy()
            ax.set_xticks(x, [f"{100 * s:g}%" for s in table.index])
            ax.set_title(method)
            ax.set_xlabel("sacrifice")
            ax.set_ylabel("% of test images")
            ax.set_ylim(0, 100)
        for ax in axes.ravel()[len(methods):]:
            ax.set_visible(False)
        handles, labels = axes.ravel()[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", title="model", fontsize=7)
        fig.suptitle("Models used by each policy at each level", fontsize=10)
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class TrainingCurvesDisplay:
    """Loss and accuracy per epoch for every model (solid = train, dashed = val)."""

    history: pd.DataFrame  # tidy: model, epoch, split, loss, accuracy

    @classmethod
    def from_histories(cls, histories: dict[str, pd.DataFrame]) -> "TrainingCurvesDisplay":
        if not histories:
            raise ValueError("no history.csv under RUN/zoo/*/; train models with `train-zoo`")
        parts = []
        for model, h in histories.items():
            for split in ("train", "val"):
                parts.append(pd.DataFrame({"model": model, "epoch": h["epoch"], "split": split,
                                           "loss": h[f"{split}_loss"],
                                           "accuracy": h[f"{split}_accuracy"]}))
        return cls(pd.concat(parts, ignore_index=True))

    @property
    def data_(self) -> pd.DataFrame:
        return self.history

    def plot(self) -> "TrainingCurvesDisplay":
        fig, axes = style.new_figure(10.0, 3.6, 1, 2)
        for ax, col in ((axes[0, 0], "loss"), (axes[0, 1], "accuracy")):
            sns.lineplot(self.history, x="epoch", y=col, hue="model", style="split",
                         style_order=["train", "val"], markers=True, ax=ax,
                         legend=col == "accuracy")
            ax.set_title(f"{col} per epoch")
        if axes[0, 1].get_legend():
            sns.move_legend(axes[0, 1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7)
        self.axes_, self.figure_ = axes, fig
        return self
