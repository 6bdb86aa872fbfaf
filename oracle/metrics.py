"""Metrics of routed answers: accuracy and macro precision / recall / F1 (scikit-learn's), and
the exact paired comparison of two models on the same samples (McNemar).

Numpy and scikit-learn only (no torch): ``router`` scores its test rows with
``classification_metrics``; ``reports`` compares models with ``paired_comparison``.
"""
from __future__ import annotations

import math

import numpy as np


def classification_metrics(labels: np.ndarray, preds: np.ndarray,
                           n_classes: int) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 (scikit-learn's
    ``precision_recall_fscore_support``, ``average="macro"``, ``zero_division=0``).

    Macro averages run over the classes that occur in ``labels`` or ``preds`` (scikit-learn's
    default); a class never predicted has precision 0, a class never present has recall 0, and
    F1 is 0 where precision + recall is 0. ``n_classes`` bounds the valid label range.
    """
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} must be equal 1-D shapes")
    if labels.size == 0:
        raise ValueError("no samples to score")
    for name, a in (("labels", labels), ("preds", preds)):
        if a.min() < 0 or a.max() >= n_classes:
            raise ValueError(f"{name} must lie in [0, {n_classes}), got [{a.min()}, {a.max()}]")
    from sklearn.metrics import precision_recall_fscore_support   # heavy: import on first use
    p, r, f, _ = precision_recall_fscore_support(labels, preds, average="macro", zero_division=0)
    return {"accuracy": float((labels == preds).mean()),
            "precision": float(p), "recall": float(r), "f1": float(f)}


def paired_comparison(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, float]:
    """Model B against model A on the same samples, with the exact two-sided McNemar test.

    Returns ``difference`` (B's accuracy minus A's), ``a_only`` / ``b_only`` (samples only A /
    only B gets right) and ``p_value``: the chance, were both equally accurate, of the
    discordant samples splitting at least this unevenly (binomial, n = a_only + b_only, 1/2;
    1.0 when they never disagree). A small p says the difference is beyond sampling noise of
    this test set; it says nothing of seed-to-seed training noise.
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired comparison needs two equal, non-empty 1-D correctness "
                         f"vectors, got {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    n = a_only + b_only
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1))
    p = min(1.0, 2 * tail / 2 ** n) if n else 1.0      # exact integers, then one division
    return {"difference": float(b.mean() - a.mean()), "a_only": a_only, "b_only": b_only,
            "p_value": float(p)}
