"""Score an assignment of samples to models on a table, and sweep oracle policies over s.

An oracle policy routes by the TRUE label (the per-sample ceiling by per-sample
correctness), so every row here is an upper bound on a deployable router at that cost,
never a router's result. Label policies are fitted on the validation table and scored on the
test table; costs are expected costs from the CostTable (``ms_per_image`` at the profiling
batch, and ``macs``), not timed executions.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from common.tables import CostTable, PredictionTable
from oracle.policy import LABEL_KINDS, fit_policy, per_sample_choice, reference_index

DEFAULT_LEVELS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
_EPS = 1e-9


def classification_metrics(labels: np.ndarray, preds: np.ndarray,
                           n_classes: int) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1.

    Macro averages run over the classes that occur in ``labels`` or ``preds`` (as
    scikit-learn does by default); a class never predicted has precision 0, a class never
    present has recall 0, and F1 is 0 where precision + recall is 0.
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
    tp = np.bincount(labels[labels == preds], minlength=n_classes).astype(np.float64)
    n_true = np.bincount(labels, minlength=n_classes).astype(np.float64)
    n_pred = np.bincount(preds, minlength=n_classes).astype(np.float64)
    used = (n_true > 0) | (n_pred > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(n_pred > 0, tp / n_pred, 0.0)
        rec = np.where(n_true > 0, tp / n_true, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    return {"accuracy": float((labels == preds).mean()),
            "precision": float(prec[used].mean()), "recall": float(rec[used].mean()),
            "f1": float(f1[used].mean())}


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


def bootstrap_held(ref_correct: np.ndarray, chosen_correct: np.ndarray, sacrifice: float,
                   n_boot: int = 1000, seed: int = 0) -> float:
    """Fraction of ``n_boot`` paired bootstrap resamples whose accuracy drop is <= s.

    The drop of a resample is mean(ref_correct - chosen_correct) over the drawn samples.
    Each per-sample difference is -1, 0 or +1, so drawing N samples with replacement is
    exactly a multinomial draw of how many of each kind appear: drawn that way (same
    distribution as index resampling, far less memory).
    """
    ref_correct = np.asarray(ref_correct, dtype=bool)
    chosen_correct = np.asarray(chosen_correct, dtype=bool)
    n = ref_correct.size
    if n == 0 or chosen_correct.shape != ref_correct.shape:
        raise ValueError("bootstrap needs two equal, non-empty correctness vectors")
    d = ref_correct.astype(np.int64) - chosen_correct.astype(np.int64)
    p = np.array([(d == 1).sum(), (d == 0).sum(), (d == -1).sum()], dtype=np.float64) / n
    draws = np.random.default_rng(seed).multinomial(n, p, size=n_boot)  # (B, 3)
    drop = (draws[:, 0] - draws[:, 2]) / n
    return float((drop <= sacrifice + _EPS).mean())


def evaluate_assignment(table: PredictionTable, chosen: np.ndarray, costs: CostTable,
                        reference: int | str, *, sacrifice: float | None = None,
                        n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Score ``chosen`` (N,) model indices on ``table``: one flat result row.

    Row keys: accuracy, precision, recall, f1 (macro), ms_per_image and macs_per_image
    (expected, from the CostTable), speedup_vs_reference (reference ms / routed ms),
    macs_ratio_vs_reference, reference, reference_accuracy, accuracy_drop, share_<model>;
    with a ``sacrifice`` also budget_held (accuracy >= reference accuracy - s on this table)
    and bootstrap_held (fraction of paired resamples whose drop stayed within s).
    """
    chosen = np.asarray(chosen)
    if chosen.shape != (table.n_samples,) or not np.issubdtype(chosen.dtype, np.integer):
        raise ValueError(f"chosen must be (N={table.n_samples},) integer model indices, got "
                         f"shape {chosen.shape} dtype {chosen.dtype}")
    M = table.n_models
    if chosen.size and (chosen.min() < 0 or chosen.max() >= M):
        raise ValueError(f"chosen holds model indices outside [0, {M})")
    ref = table.model_index(reference) if isinstance(reference, str) else int(reference)
    rows = np.arange(table.n_samples)
    preds = table.preds[rows, chosen]
    row: dict[str, Any] = classification_metrics(table.labels, preds, table.n_classes)
    ms = costs.vector(table.model_names, "ms_per_image")
    macs = costs.vector(table.model_names, "macs")
    share = np.bincount(chosen, minlength=M) / table.n_samples
    ref_correct = table.correct[:, ref]
    ref_acc = float(ref_correct.mean())
    row["ms_per_image"] = float(share @ ms)
    row["macs_per_image"] = float(share @ macs)
    row["speedup_vs_reference"] = (float(ms[ref] / row["ms_per_image"])
                                   if row["ms_per_image"] > 0 else float("inf"))
    row["macs_ratio_vs_reference"] = (float(macs[ref] / row["macs_per_image"])
                                      if row["macs_per_image"] > 0 else float("inf"))
    row["reference"] = table.model_names[ref]
    row["reference_accuracy"] = ref_acc
    row["accuracy_drop"] = ref_acc - row["accuracy"]
    if sacrifice is not None:
        row["budget_held"] = bool(row["accuracy"] >= ref_acc - sacrifice - _EPS)
        chosen_correct = preds == table.labels
        row["bootstrap_held"] = bootstrap_held(ref_correct, chosen_correct, sacrifice,
                                               n_boot=n_boot, seed=seed)
    for name, sh in zip(table.model_names, share):
        row[f"share_{name}"] = float(sh)
    return row


def sacrifice_sweep(val: PredictionTable, test: PredictionTable, costs: CostTable,
                    levels: Sequence[float] = DEFAULT_LEVELS,
                    kinds: Sequence[str] = LABEL_KINDS, *, n_boot: int = 1000,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Fit each oracle kind on ``val`` at each sacrifice level, score it on ``test``.

    Returns flat rows: the reference (method "reference", family "best-single"), one row
    per (kind, level) (method "oracle-<kind>", family "oracle"), the per-sample ceiling
    (method "oracle-per-sample", family "ceiling", sacrifice 0: cheapest right model per
    sample) and the least-cost per-sample assignment holding each level (method
    "oracle-per-sample-budget", family "ceiling"). Ceilings use each TEST sample's
    correctness by definition: they are bounds, not fitted policies.
    The reference is the most accurate model on ``val``; budget_held compares with its test
    accuracy.
    """
    val.check_compatible(test)
    bad = [k for k in kinds if k not in LABEL_KINDS]
    if bad:
        raise ValueError(f"unknown oracle kinds {bad}; use some of {LABEL_KINDS}")
    levels = [float(s) for s in levels]
    if any(not (0.0 <= s <= 1.0) for s in levels):
        raise ValueError(f"sacrifice levels must be fractions in [0, 1], got {levels}")
    cvec = costs.vector(val.model_names, "ms_per_image")
    ref = reference_index(val, cvec)

    def emit(method: str, family: str, s: float, chosen: np.ndarray,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"method": method, "family": family, "sacrifice": s}
        row.update(evaluate_assignment(test, chosen, costs, ref, sacrifice=s,
                                       n_boot=n_boot, seed=seed))
        row.update(extra or {})
        return row

    rows = [emit("reference", "best-single", 0.0,
                 np.full(test.n_samples, ref, dtype=np.int64))]
    for kind in kinds:
        for s in levels:
            pol = fit_policy(kind, val, cvec, s)
            rows.append(emit(f"oracle-{kind}", "oracle", s, pol.route(test.labels, test),
                             {"val_accuracy": pol.meta["val_accuracy"],
                              "val_ms_per_image": pol.meta["expected_cost"]}))
    rows.append(emit("oracle-per-sample", "ceiling", 0.0,
                     per_sample_choice(test, cvec, reference=ref)))
    for s in levels:
        rows.append(emit("oracle-per-sample-budget", "ceiling", s,
                         per_sample_choice(test, cvec, reference=ref, sacrifice=s)))
    return rows


def sweep_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Column order for writing sweep rows: fixed leading columns, then share_<model>."""
    lead = ["method", "family", "sacrifice", "accuracy", "precision", "recall", "f1",
            "ms_per_image", "macs_per_image", "speedup_vs_reference", "macs_ratio_vs_reference",
            "budget_held", "bootstrap_held", "accuracy_drop", "reference", "reference_accuracy",
            "val_accuracy", "val_ms_per_image"]
    rest: list[str] = []
    for r in rows:
        rest += [k for k in r if k not in lead and k not in rest]
    return lead + rest
