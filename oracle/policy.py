"""Oracle policies: which model to run for each true label (or each sample) under a sacrifice.

Every policy here routes by the TRUE label (or by per-sample correctness): it is an upper
bound on what a deployable router could achieve, never a router itself.

All label policies are fitted on the validation table; costs are a per-model vector (M,)
aligned with ``table.model_names`` (usually ``CostTable.vector(names)``, ms per image).
Ties in cost are broken by the lower model index; nothing assumes the table is sorted by cost.

Kinds (sacrifice ``s`` is a fraction, e.g. 0.01):

- ``overlap``: per label, the cheapest model whose correct set covers at least (1 - s) of the
  reference model's correct set on that label.
- ``accuracy``: per label, the cheapest model whose accuracy on that label is at least the
  reference's accuracy on that label minus s.
- ``budget``: the label->model table of least expected cost whose overall accuracy is at least
  the reference's minus s; solved exactly by dynamic programming over labels with the state
  "correct answers so far" (capped at the number needed).
- ``per_sample``: the ceiling; each sample goes to the cheapest model that is right on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.ensembles import is_ensemble
from common.io import read_json, write_json
from common.tables import PredictionTable, TableMismatchError

LABEL_KINDS = ("overlap", "accuracy", "budget")
KINDS = LABEL_KINDS + ("per_sample",)
_EPS = 1e-9  # slack for comparing counts derived from a float sacrifice


class PolicyError(ValueError):
    """Raised for a policy that cannot be fitted, loaded or applied as asked."""


@dataclass
class Policy:
    """A fitted oracle policy.

    ``label_to_model`` maps every class index to a model name (labels absent from the table
    it was fitted on map to the reference); it is ``None`` for the ``per_sample`` kind, which
    needs the table at routing time. ``meta`` carries what fitting measured (costs, shares,
    validation accuracy, expected cost, ...).
    """

    kind: str
    sacrifice: float
    model_names: list[str]
    label_to_model: dict[int, str] | None
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PolicyError(f"unknown policy kind {self.kind!r}; use one of {KINDS}")
        self.model_names = [str(m) for m in self.model_names]
        if self.reference not in self.model_names:
            raise PolicyError(f"reference model {self.reference!r} is not among the policy's "
                              f"models {self.model_names}")
        if self.label_to_model is not None:
            self.label_to_model = {int(k): str(v) for k, v in self.label_to_model.items()}
            unknown = sorted({v for v in self.label_to_model.values()} - set(self.model_names))
            if unknown:
                raise PolicyError(f"label_to_model names models {unknown} that are not in "
                                  f"{self.model_names}")
        elif self.kind != "per_sample":
            raise PolicyError(f"a {self.kind!r} policy needs label_to_model")

    # ---- routing ---------------------------------------------------------------------
    @property
    def reference_index(self) -> int:
        return self.model_names.index(self.reference)

    def label_indices(self) -> dict[int, int]:
        """Label -> model index (into ``model_names``)."""
        if self.label_to_model is None:
            raise PolicyError("a per_sample policy has no label table; call route(labels, table)")
        return {c: self.model_names.index(m) for c, m in self.label_to_model.items()}

    def route(self, labels: np.ndarray, table: PredictionTable | None = None) -> np.ndarray:
        """(N,) int64 model indices for samples with TRUE labels ``labels``.

        Labels the policy has no entry for go to the reference model. ``table`` (optional for
        label policies, required for ``per_sample``) must hold the same models in the same
        order; for ``per_sample`` its labels must be ``labels``.
        """
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise PolicyError(f"labels must be 1-D, got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise PolicyError(f"labels must be integers, got dtype {labels.dtype}")
        if table is not None and table.model_names != self.model_names:
            raise TableMismatchError(
                f"policy was fitted for models {self.model_names} but the table holds "
                f"{table.model_names}; refit the policy on a table of the same models")
        if self.kind == "per_sample":
            if table is None:
                raise PolicyError("a per_sample policy needs the prediction table: "
                                  "route(labels, table)")
            if not np.array_equal(labels, table.labels):
                raise PolicyError("per_sample routing needs labels equal to table.labels")
            if "costs" not in self.meta:
                raise PolicyError("this per_sample policy stores no costs in meta['costs']; "
                                  "build it with fit_policy('per_sample', val, costs, s)")
            costs = np.asarray(self.meta["costs"], dtype=np.float64)
            return per_sample_choice(table, costs, reference=self.reference_index)
        lookup = self.label_indices()
        out = np.full(labels.shape, self.reference_index, dtype=np.int64)
        for c, m in lookup.items():
            out[labels == c] = m
        return out

    def cost(self, costs: np.ndarray, shares: np.ndarray | None = None) -> float:
        """Expected cost per image: sum over labels of share_label * costs[model(label)].

        ``shares`` (C,) defaults to the label shares of the table the policy was fitted on.
        """
        costs = _check_costs(costs, len(self.model_names))
        if shares is None:
            if "label_shares" not in self.meta:
                raise PolicyError("this policy has no stored label shares; pass shares=")
            shares = np.asarray(self.meta["label_shares"], dtype=np.float64)
        idx = self.label_indices()
        return float(sum(shares[c] * costs[idx.get(c, self.reference_index)]
                         for c in range(len(shares))))

    # ---- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sacrifice": float(self.sacrifice),
                "model_names": list(self.model_names),
                "label_to_model": (None if self.label_to_model is None else
                                   {str(k): v for k, v in sorted(self.label_to_model.items())}),
                "reference": self.reference, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Policy":
        missing = [k for k in ("kind", "sacrifice", "model_names", "label_to_model", "reference")
                   if k not in d]
        if missing:
            raise PolicyError(f"policy JSON lacks keys {missing}; refit it with fit_policy")
        l2m = d["label_to_model"]
        return cls(kind=d["kind"], sacrifice=float(d["sacrifice"]),
                   model_names=list(d["model_names"]),
                   label_to_model=None if l2m is None else {int(k): v for k, v in l2m.items()},
                   reference=d["reference"], meta=dict(d.get("meta") or {}))

    def save(self, path: str | Path) -> Path:
        """Write the policy as JSON, atomically."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        return cls.from_dict(read_json(path))


# ---- helpers -------------------------------------------------------------------------
def _check_costs(costs: Any, n_models: int) -> np.ndarray:
    c = np.asarray(costs, dtype=np.float64)
    if c.shape != (n_models,):
        raise PolicyError(f"costs has shape {c.shape}, expected ({n_models},): one cost per "
                          "model, in the table's model order (CostTable.vector(table.model_names))")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise PolicyError(f"costs must be finite and >= 0, got {c.tolist()}; re-run "
                          "`profile-zoo` for models with a zero throughput")
    return c


def _check_sacrifice(s: float) -> float:
    s = float(s)
    if not (0.0 <= s <= 1.0):  # also refuses NaN
        raise PolicyError(f"sacrifice must be a fraction in [0, 1] (0.01 = one point), got {s}")
    return s


def _check_table(table: PredictionTable) -> None:
    if table.n_samples == 0:
        raise PolicyError(f"table {table.split!r} has no samples")
    if table.n_models == 0:
        raise PolicyError(f"table {table.split!r} has no models")


def _cost_order(costs: np.ndarray) -> np.ndarray:
    """Model indices from cheapest to dearest, ties by lower index."""
    return np.lexsort((np.arange(len(costs)), costs))


def reference_index(val: PredictionTable, costs: np.ndarray | None = None) -> int:
    """The most accurate single model on ``val``; ties go to the cheaper (then the lower index).

    Committees (``is_ensemble``) are left out: a negative level asks for an answer better than
    the best single model, which a committee can be. Without ``costs`` a tie goes to the lower
    index (tables are sorted by cost).
    """
    _check_table(val)
    counts = val.correct.sum(axis=0).astype(np.int64)
    single = np.array([not is_ensemble(n) for n in val.model_names])
    if single.any():
        counts = np.where(single, counts, -1)
    tied = np.flatnonzero(counts == counts.max())
    if costs is None or len(tied) == 1:
        return int(tied[0])
    costs = _check_costs(costs, val.n_models)
    return int(tied[np.argmin(costs[tied])])  # argmin keeps the first (lowest index) of ties


def _label_counts(table: PredictionTable, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C,) samples per label and (C, M) correct answers per label and model."""
    labels = table.labels
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise PolicyError(f"labels must lie in [0, {n_classes}), got range "
                          f"[{labels.min()}, {labels.max()}]")
    n_c = np.bincount(labels, minlength=n_classes)
    k_cm = np.zeros((n_classes, table.n_models), dtype=np.int64)
    np.add.at(k_cm, labels, table.correct.astype(np.int64))
    return n_c, k_cm


def _cheapest_feasible(feasible: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """(C,) for each row of feasible (C, M) the cheapest feasible model (ties: lower index)."""
    order = _cost_order(costs)
    first = np.argmax(feasible[:, order], axis=1)  # first True in cost order
    return order[first]


def _fit_budget(n_c: np.ndarray, k_cm: np.ndarray, costs: np.ndarray,
                needed: int) -> np.ndarray:
    """Exact multiple-choice knapsack: one model per label, sum k >= needed, least cost.

    Minimises sum_c n_c * costs[m_c] (= N x expected cost) by dynamic programming over
    labels with state j = correct answers so far, capped at ``needed``: dp[j] is the least
    cost of the labels processed so far reaching j. Exact because counts are integers.
    """
    C, M = k_cm.shape
    order = _cost_order(costs)          # try cheaper models first so ties keep the cheaper
    dp = np.full(needed + 1, np.inf)
    dp[0] = 0.0
    # back-pointers: the model chosen for label c at state j; the source state is j - k
    # except for the capped state, whose source is kept in cap_src[c]
    choice = np.zeros((C, needed + 1), dtype=np.int16 if M < 2**15 else np.int64)
    cap_src = np.zeros(C, dtype=np.int64)
    tol = 1e-12 * (float(n_c.sum()) * float(costs.max(initial=0.0)) + 1.0)
    for c in range(C):
        new = np.full(needed + 1, np.inf)
        for m in order:
            k = int(k_cm[c, m])
            cand = np.full(needed + 1, np.inf)
            if k < needed:                       # uncapped states: one source each
                cand[k:needed] = dp[:needed - k]
            lo = max(needed - k, 0)              # capped state: any source j >= needed - k
            j = lo + int(np.argmin(dp[lo:]))
            cand[needed] = dp[j]
            cand += n_c[c] * costs[m]
            better = cand < new - tol            # strict: a cheaper-ordered model keeps ties
            new[better] = cand[better]
            choice[c, better] = m
            if better[needed]:
                cap_src[c] = j
        dp = new
    if not np.isfinite(dp[needed]):
        raise PolicyError(f"no label->model table reaches {needed} correct answers; the "
                          "sacrifice is smaller than any achievable table allows")
    picks = np.zeros(C, dtype=np.int64)
    j = needed
    for c in range(C - 1, -1, -1):
        picks[c] = choice[c, j]
        j = int(cap_src[c]) if j == needed else j - int(k_cm[c, picks[c]])
    return picks


def fit_policy(kind: str, val_table: PredictionTable, costs: np.ndarray,
               sacrifice: float) -> Policy:
    """Fit a label->model oracle policy on the validation table.

    ``kind`` is "overlap", "accuracy" or "budget" (or "per_sample", which stores the costs
    and routes per sample at routing time). ``costs`` (M,) aligned with the table's models.
    """
    if kind not in KINDS:
        raise PolicyError(f"unknown policy kind {kind!r}; use one of {KINDS}")
    _check_table(val_table)
    costs = _check_costs(costs, val_table.n_models)
    s = _check_sacrifice(sacrifice)
    names = val_table.model_names
    ref = reference_index(val_table, costs)
    C = val_table.n_classes
    n_c, k_cm = _label_counts(val_table, C)
    N = int(n_c.sum())
    meta: dict[str, Any] = {"fitted_on": val_table.split, "costs": costs.tolist(),
                            "label_shares": (n_c / N).tolist(),
                            "reference_accuracy": float(k_cm[:, ref].sum() / N),
                            "bound": "routes by the true label: an upper bound, not a router"}
    if kind == "per_sample":
        return Policy(kind, s, names, None, names[ref], meta)
    present = n_c > 0
    ref_correct = val_table.correct[:, ref]
    if kind == "overlap":
        # covered[c, m] = |correct_m & correct_ref| on label c
        covered = np.zeros((C, val_table.n_models), dtype=np.int64)
        np.add.at(covered, val_table.labels,
                  (val_table.correct & ref_correct[:, None]).astype(np.int64))
        need = (1.0 - s) * k_cm[:, ref]                       # (C,)
        feasible = covered >= need[:, None] - _EPS
        picks = _cheapest_feasible(feasible, costs)
    elif kind == "accuracy":
        # k_m / n_c >= k_ref / n_c - s  <=>  k_m >= k_ref - s * n_c
        feasible = k_cm >= (k_cm[:, [ref]] - s * n_c[:, None]) - _EPS
        picks = _cheapest_feasible(feasible, costs)
    else:  # budget
        needed = max(0, math.ceil(k_cm[:, ref].sum() - s * N - _EPS))
        picks = _fit_budget(n_c[present], k_cm[present], costs, needed)
        full = np.full(C, ref, dtype=np.int64)
        full[present] = picks
        picks = full
        meta["needed_correct"] = int(needed)
    picks = np.where(present, picks, ref)  # labels absent from val fall back to the reference
    l2m = {int(c): names[int(picks[c])] for c in range(C)}
    val_correct = int(k_cm[np.arange(C), picks].sum())
    meta.update({"val_accuracy": val_correct / N,
                 "expected_cost": float((n_c / N) @ costs[picks]),
                 "reference_cost": float(costs[ref]),
                 "absent_labels": [int(c) for c in np.flatnonzero(~present)]})
    return Policy(kind, s, names, l2m, names[ref], meta)


def per_sample_choice(table: PredictionTable, costs: np.ndarray,
                      reference: int | str | None = None,
                      sacrifice: float | None = None) -> np.ndarray:
    """(N,) per-sample ceiling: the cheapest model that is right on each sample.

    Without ``sacrifice`` (the contract): a sample no model gets right goes to the reference
    (index or name; default ``reference_index(table, costs)``).
    With ``sacrifice`` s (0 included): the least-cost per-sample assignment whose number of
    right answers is at least the reference's minus s*N on this table. Each sample then takes
    either its cheapest right model or the cheapest model overall (samples no model gets right
    take the cheapest); the samples kept right are those with the smallest extra cost, which
    is exact because every sample weighs one right answer.
    Either way this uses each sample's correctness: a bound, never a router.
    """
    _check_table(table)
    costs = _check_costs(costs, table.n_models)
    if reference is None:
        ref = reference_index(table, costs)
    elif isinstance(reference, str):
        ref = table.model_index(reference)
    else:
        ref = int(reference)
        if not 0 <= ref < table.n_models:
            raise PolicyError(f"reference index {ref} out of range for {table.n_models} models")
    correct = table.correct
    order = _cost_order(costs)
    sorted_correct = correct[:, order]
    any_right = sorted_correct.any(axis=1)
    cheapest_right = order[np.argmax(sorted_correct, axis=1)]
    if sacrifice is None:
        return np.where(any_right, cheapest_right, ref).astype(np.int64)
    s = _check_sacrifice(sacrifice)
    cheapest = int(order[0])
    needed = max(0, math.ceil(correct[:, ref].sum() - s * table.n_samples - _EPS))
    chosen = np.full(table.n_samples, cheapest, dtype=np.int64)
    free = correct[:, cheapest]                      # right at the least cost already
    still = needed - int(free.sum())
    if still > 0:
        cand = np.flatnonzero(any_right & ~free)
        extra = costs[cheapest_right[cand]] - costs[cheapest]
        keep = cand[np.argsort(extra, kind="stable")[:still]]  # ties: lower sample index
        chosen[keep] = cheapest_right[keep]
    return chosen
