"""Choosing on validation: the cheapest adequate single model and the one deployed answer.

Numpy only. Both rules read validation figures and nothing else, so no choice made here can
depend on the test split:

- ``cheapest_single``: the cheapest model whose val accuracy, minus ``z`` paired standard
  errors of its difference to the reference (the margin rule every router fit uses), meets the
  level's target (reference val accuracy minus the sacrifice). The reference always qualifies.
- ``select_deployable``: of the candidates whose fit met the target on val, the one with the
  lowest cost the fit expected (ms per image on val); ties go to the simpler method (each
  kind's ``simplicity`` rank; a single model is the simplest of all).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from router.base import RouterError, accuracy_lower_bound

_EPS = 1e-9


@dataclass
class Candidate:
    """One deployable answer at one level, as its fit saw it on validation."""

    method: str
    val_accuracy: float
    fit_ms_per_image: float        # expected cost per image on val, router included
    meets_target: bool             # val accuracy (minus the margin) >= the level's target
    simplicity: int = 0            # tie-break at equal cost, lower first (0: a single model)


def cheapest_single(val_correct: np.ndarray, costs: np.ndarray, reference: int, target: float,
                    z: float = 1.0) -> tuple[int, float]:
    """(model index, its val accuracy bound): the cheapest model meeting ``target`` on val.

    ``val_correct`` (N, M) booleans, ``costs`` (M,). The bound of model m is its val accuracy
    minus ``z`` paired SEs of its difference to the reference model on the same images.
    """
    correct = np.asarray(val_correct, dtype=bool)
    costs = np.asarray(costs, dtype=np.float64)
    if correct.ndim != 2 or correct.shape[1] != len(costs):
        raise RouterError(f"val_correct must be (N, {len(costs)}), got {correct.shape}")
    if not 0 <= reference < len(costs):
        raise RouterError(f"reference index {reference} is not among {len(costs)} models")
    bounds = accuracy_lower_bound(correct.T, correct[:, reference], z)
    for m in np.lexsort((np.arange(len(costs)), costs)):
        if m == reference or bounds[m] >= target - _EPS:
            return int(m), float(bounds[m])
    raise AssertionError("unreachable: the reference always qualifies")


def select_deployable(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate meeting its target on val with the least expected cost (see module doc)."""
    ok = [c for c in candidates if c.meets_target]
    if not ok:
        raise RouterError("no deployable candidate met the target on val; cheapest-single always "
                          "does, so pass it among the candidates")
    return min(ok, key=lambda c: (round(c.fit_ms_per_image, 12), c.simplicity, c.method))
