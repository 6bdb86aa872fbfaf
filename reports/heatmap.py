"""Heatmaps: prediction overlap (total and per label) and confusion matrices.

Overlap cell ``[i, j]`` = % of model j's correct answers that model i also gets
(``oracle.overlap.overlap_matrices``): rows are the "weaker" model asked about, columns the
"stronger" model whose correct set is the base. Every overlap map uses one fixed 0-100 scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import seaborn as sns

from common.tables import PredictionTable
from reports import style


def _matrix_rows(matrix: np.ndarray, names: Sequence[str], scope: str) -> list[dict[str, Any]]:
    return [{"scope": scope, "row_model": names[i], "col_model": names[j],
             "percent": float(matrix[i, j])}
            for i in range(len(names)) for j in range(len(names))]


def _draw_overlap(ax: Any, matrix: np.ndarray, names: Sequence[str], title: str,
                  cbar: bool, annot_size: float, cbar_ax: Any = None) -> None:
    frame = pd.DataFrame(matrix, index=list(names), columns=list(names))
    sns.heatmap(frame, ax=ax, vmin=style.OVERLAP_VMIN, vmax=style.OVERLAP_VMAX,
                cmap=style.OVERLAP_CMAP, annot=True, fmt=".0f", square=False,
                annot_kws={"size": annot_size}, cbar=cbar, cbar_ax=cbar_ax,
                cbar_kws={"label": "% of the column model's correct answers"} if cbar else None,
                mask=np.isnan(matrix), linewidths=0.5, linecolor="white")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=90)
    ax.tick_params(axis="y", labelrotation=0)


def _name_inches(names: Sequence[str], fontsize: float = 8.0) -> float:
    """Room a column of tick labels needs (inches), from the longest name."""
    return 0.3 + 0.55 * fontsize / 72 * max((len(n) for n in names), default=4)


@dataclass
class OverlapDisplay:
    """Overlap maps of M models: ``total`` (M, M) pooled over all samples, ``per_label``
    (C, M, M) within each label."""

    model_names: list[str]
    total: np.ndarray
    per_label: np.ndarray
    class_names: list[str]
    split: str = ""

    def __post_init__(self) -> None:
        m = len(self.model_names)
        self.total = np.asarray(self.total, dtype=float)
        self.per_label = np.asarray(self.per_label, dtype=float)
        if self.total.shape != (m, m):
            raise ValueError(f"total overlap has shape {self.total.shape}, expected ({m}, {m})")
        if self.per_label.ndim != 3 or self.per_label.shape[1:] != (m, m):
            raise ValueError(f"per-label overlap has shape {self.per_label.shape}, "
                             f"expected (C, {m}, {m})")
        if len(self.class_names) != self.per_label.shape[0]:
            raise ValueError(f"{len(self.class_names)} class names for "
                             f"{self.per_label.shape[0]} labels")

    @classmethod
    def from_table(cls, table: PredictionTable,
                   class_names: Sequence[str] | None = None) -> "OverlapDisplay":
        """Compute the maps with ``oracle.overlap.overlap_matrices`` (the shared definition)."""
        from oracle.overlap import overlap_matrices
        ov = overlap_matrices(table).ordered()  # weakest -> strongest on both axes
        n_labels = np.asarray(ov.per_label).shape[0]
        names = list(class_names) if class_names else [f"class {k}" for k in range(n_labels)]
        return cls(list(ov.model_names), ov.total, ov.per_label, names, table.split)

    @property
    def data_(self) -> pd.DataFrame:
        """Tidy rows (scope, row_model, col_model, percent); scope is "total" or a class name."""
        rows = _matrix_rows(self.total, self.model_names, "total")
        for k, name in enumerate(self.class_names):
            rows += _matrix_rows(self.per_label[k], self.model_names, name)
        return pd.DataFrame(rows)

    def plot_total(self, ax: Any = None) -> "OverlapDisplay":
        """The pooled map, annotated, 0-100 scale."""
        m = len(self.model_names)
        cell = max(0.5, min(0.9, 6.5 / max(m, 1)))
        if ax is None:
            label = _name_inches(self.model_names)
            fig, axes = style.new_figure(label + cell * m + 1.3, label + cell * m + 0.6)
            ax = axes[0, 0]
        suffix = f" ({self.split} split)" if self.split else ""
        _draw_overlap(ax, self.total, self.model_names,
                      f"Overlap of correct answers, all labels pooled{suffix}",
                      cbar=True, annot_size=8 if cell >= 0.5 else 6.5)
        ax.set_ylabel("row model: % of the column model's correct answers it also gets")
        ax.set_xlabel("column model (weakest left, strongest right)")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def plot_per_label(self, ncols: int | None = None) -> "OverlapDisplay":
        """A grid of small multiples, one per label, titled with the class name; one colour bar
        and the same 0-100 scale as the total map."""
        c, m = len(self.class_names), len(self.model_names)
        ncols = ncols or min(c, 5)
        nrows = math.ceil(c / ncols)
        cell = 0.36 if m > 6 else 0.5
        panel = cell * m + 0.25
        label = _name_inches(self.model_names, 7.0)
        fig, axes = style.new_figure(max(label + panel * ncols + 1.0, 6.0),
                                     label + (panel + 0.3) * nrows + 0.5, nrows, ncols)
        flat = axes.ravel()
        for k, name in enumerate(self.class_names):
            ax = flat[k]
            _draw_overlap(ax, self.per_label[k], self.model_names, name, cbar=False,
                          annot_size=6.0 if m > 6 else 7.5)
            ax.tick_params(labelsize=7)
            if k % ncols:
                ax.set_yticklabels([])
            if k < c - ncols:
                ax.set_xticklabels([])
        for ax in flat[c:]:
            ax.set_visible(False)
        mappable = flat[0].collections[0]
        fig.colorbar(mappable, ax=list(flat[:c]), shrink=0.6,
                     label="% of the column model's correct answers")
        suffix = f" ({self.split} split)" if self.split else ""
        fig.suptitle(f"Overlap within each label{suffix}: cell = % of the column model's "
                     "correct answers that the row model also gets (blank: column model never "
                     "right)", fontsize=9)
        self.axes_, self.figure_ = axes, fig
        return self


@dataclass
class ConfusionDisplay:
    """Row-normalised confusion matrix (% of each true class), annotated."""

    matrix: np.ndarray          # (C, C) counts, rows = true, columns = predicted
    class_names: list[str]
    title: str

    @classmethod
    def from_predictions(cls, labels: np.ndarray, preds: np.ndarray,
                         class_names: Sequence[str] | None, title: str) -> "ConfusionDisplay":
        labels, preds = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
        if labels.shape != preds.shape:
            raise ValueError(f"labels {labels.shape} and predictions {preds.shape} differ in shape")
        c = int(max(labels.max(initial=0), preds.max(initial=0)) + 1)
        if class_names:
            if len(class_names) < c:
                raise ValueError(f"{len(class_names)} class names but labels reach {c - 1}")
            c = len(class_names)
        names = list(class_names) if class_names else [str(k) for k in range(c)]
        matrix = np.zeros((c, c), dtype=np.int64)
        np.add.at(matrix, (labels, preds), 1)
        return cls(matrix, names, title)

    @property
    def data_(self) -> pd.DataFrame:
        c = len(self.class_names)
        return pd.DataFrame([{"true": self.class_names[i], "predicted": self.class_names[j],
                              "count": int(self.matrix[i, j])}
                             for i in range(c) for j in range(c)])

    def plot(self, ax: Any = None) -> "ConfusionDisplay":
        c = len(self.class_names)
        if ax is None:
            fig, axes = style.new_figure(2.6 + 0.5 * c, 1.8 + 0.45 * c)
            ax = axes[0, 0]
        totals = self.matrix.sum(axis=1, keepdims=True)
        percent = np.divide(100.0 * self.matrix, totals, out=np.full(self.matrix.shape, np.nan),
                            where=totals > 0)
        frame = pd.DataFrame(percent, index=self.class_names, columns=self.class_names)
        # empty cells stay blank so the mistakes that happen stand out
        shown = np.vectorize(lambda v: f"{v:.0f}" if v >= 0.5 else "<1")(np.nan_to_num(percent))
        text = np.where(self.matrix > 0, shown, "")
        sns.heatmap(frame, ax=ax, vmin=0, vmax=100, cmap=style.CONFUSION_CMAP, annot=text,
                    fmt="", annot_kws={"size": 7}, square=True,
                    cbar_kws={"label": "% of the true class"})
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        total = self.matrix.sum()
        acc = f" (accuracy {100 * np.trace(self.matrix) / total:.1f}%)" if total else ""
        ax.set_title(self.title + acc)
        ax.tick_params(axis="x", labelrotation=45)
        ax.tick_params(axis="y", labelrotation=0)
        self.ax_, self.figure_ = ax, ax.figure
        return self
