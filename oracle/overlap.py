"""Overlap of models' correct answers: how much of one model's right answers another shares.

``total[i, j] = 100 * |correct_i & correct_j| / |correct_j|`` pooled over all samples: the
percentage of model j's correct answers that model i also gets right (NaN when model j is
never right). With i the weaker and j the stronger model this is the original study's
"% weaker of stronger". ``per_label[c]`` is the same matrix within label c. The pooled total
is computed from pooled counts, not averaged over labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.tables import PredictionTable


@dataclass
class Overlap:
    """Overlap matrices of one table. Shapes: M models, C labels."""

    model_names: list[str]
    total: np.ndarray               # (M, M) percent, NaN where column model is never right
    per_label: np.ndarray           # (C, M, M) percent within each label
    both_total: np.ndarray          # (M, M) |correct_i & correct_j| pooled
    both_per_label: np.ndarray      # (C, M, M) the same within each label
    correct_total: np.ndarray       # (M,) right answers per model
    correct_per_label: np.ndarray   # (C, M)
    samples_per_label: np.ndarray   # (C,)

    @property
    def accuracy(self) -> np.ndarray:
        """(M,) accuracy of each model on the table."""
        return self.correct_total / max(int(self.samples_per_label.sum()), 1)

    def weak_to_strong(self) -> list[int]:
        """Model indices from weakest to strongest (fewest right answers first; ties keep
        the table order)."""
        return [int(i) for i in np.argsort(self.correct_total, kind="stable")]

    def ordered(self, order: list[int] | None = None) -> "Overlap":
        """This overlap with models reordered (default weakest -> strongest)."""
        idx = np.asarray(self.weak_to_strong() if order is None else order, dtype=np.int64)
        return Overlap(model_names=[self.model_names[i] for i in idx],
                       total=self.total[np.ix_(idx, idx)],
                       per_label=self.per_label[:, idx][:, :, idx],
                       both_total=self.both_total[np.ix_(idx, idx)],
                       both_per_label=self.both_per_label[:, idx][:, :, idx],
                       correct_total=self.correct_total[idx],
                       correct_per_label=self.correct_per_label[:, idx],
                       samples_per_label=self.samples_per_label)

    def pair_rows(self) -> list[dict[str, Any]]:
        """Flat rows (label "all" or int, weaker, stronger, percent, both, stronger_correct)
        for every ordered pair with the weaker model (fewer right answers overall) first."""
        rank = {m: r for r, m in enumerate(self.weak_to_strong())}
        rows: list[dict[str, Any]] = []
        M = len(self.model_names)
        pairs = [(i, j) for i in range(M) for j in range(M) if rank[i] < rank[j]]
        blocks = [("all", self.total, self.both_total, self.correct_total)]
        blocks += [(c, self.per_label[c], self.both_per_label[c], self.correct_per_label[c])
                   for c in range(self.per_label.shape[0])]
        for label, pct, both, corr in blocks:
            for i, j in pairs:
                rows.append({"label": label, "weaker": self.model_names[i],
                             "stronger": self.model_names[j], "percent": float(pct[i, j]),
                             "both_correct": int(both[i, j]), "stronger_correct": int(corr[j])})
        return rows


def _percent(both: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """100 * both[..., i, j] / correct[..., j], NaN where correct[..., j] == 0."""
    denom = correct[..., None, :].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 100.0 * both / denom
    return np.where(denom > 0, out, np.nan)


def overlap_matrices(table: PredictionTable) -> Overlap:
    """Pooled and per-label overlap matrices of ``table`` (see the module docstring)."""
    if table.n_samples == 0:
        raise ValueError(f"table {table.split!r} has no samples; overlap needs at least one")
    C = table.n_classes
    labels = table.labels
    if labels.min() < 0 or labels.max() >= C:
        raise ValueError(f"labels must lie in [0, {C}) (the table's probs width), got "
                         f"[{labels.min()}, {labels.max()}]")
    corr = table.correct.astype(np.int64)                      # (N, M)
    both_total = corr.T @ corr                                 # (M, M)
    M = table.n_models
    both_per_label = np.zeros((C, M, M), dtype=np.int64)
    correct_per_label = np.zeros((C, M), dtype=np.int64)
    for c in np.unique(labels):
        rows = corr[labels == c]
        both_per_label[c] = rows.T @ rows
        correct_per_label[c] = rows.sum(axis=0)
    correct_total = corr.sum(axis=0)
    return Overlap(model_names=list(table.model_names),
                   total=_percent(both_total, correct_total),
                   per_label=_percent(both_per_label, correct_per_label),
                   both_total=both_total, both_per_label=both_per_label,
                   correct_total=correct_total, correct_per_label=correct_per_label,
                   samples_per_label=np.bincount(labels, minlength=C))
