"""The router interface and the threshold logic every router shares (written once, here).

A ``Router`` sees a batch of uint8 images and returns one model index per image (indices into
``model_names``, which are sorted by cost). Threshold routers (the confidence cascade and the
``sample``-mode dispatcher) all decide the same way: take the first model, in cost order, whose
score clears its threshold, else a fallback. ``first_confident`` is that rule;
``least_cost_meeting`` picks the cheapest setting whose simulated accuracy holds a target
(``paired_se`` gives the one-standard-error margin the fits subtract first);
``table_precision`` rounds live scores the way the float16 prediction tables store them, so a
threshold fitted on a table makes exactly the same decision when executed.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

_EPS = 1e-9


class RouterError(ValueError):
    """A router was built, fitted or called with inputs it cannot use; the message says why."""


@dataclass
class Routing:
    """What a router decided for N inputs and why.

    ``chosen`` (N,) model indices; ``scores`` (N, K) the numbers behind the choice (class
    probabilities, predicted chance each model is right, or each stage's confidence; NaN where
    not computed), named by ``score_names`` (K,); ``rule`` says in words how scores became choices.
    """

    chosen: np.ndarray
    scores: np.ndarray | None = None
    score_names: list[str] = field(default_factory=list)
    rule: str = ""


class Router(ABC):
    """Picks a model per input from the image alone (bounds that cheat say so in their name)."""

    model_names: list[str]
    # True for routers that decide by running the models themselves (a cascade): a
    # classifier binds its models to them (``attach``) and calls ``run``
    runs_models: bool = False

    @abstractmethod
    def route(self, images: torch.Tensor) -> np.ndarray:
        """(N,) int64 model indices for uint8 images (N, C, H, W)."""

    def explain(self, images: torch.Tensor) -> Routing:
        """The choice plus the scores behind it; routers with scores override this."""
        return Routing(chosen=self.route(images))

    @property
    def macs_per_image(self) -> int:
        """The router's own multiply-accumulates per image (0 for table lookups)."""
        return 0

    def describe(self) -> dict[str, Any]:
        """JSON-able settings (thresholds, mapping, ...) for results and artifacts."""
        return {"type": type(self).__name__}


class ConstantRouter(Router):
    """Every input to one model: how single models run through the same harness."""

    def __init__(self, model_names: list[str], index: int):
        if not 0 <= index < len(model_names):
            raise RouterError(f"model index {index} out of range for {model_names}")
        self.model_names, self.index = list(model_names), int(index)

    def route(self, images: torch.Tensor) -> np.ndarray:
        return np.full(len(images), self.index, dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        return {"type": "constant", "model": self.model_names[self.index]}


class AssignmentRouter(Router):
    """Replays a precomputed assignment (N,) for exactly N inputs, in order.

    Used for the bounds that need the true label or per-sample correctness (oracle policies,
    the per-sample ceiling): the lookup runs inside the clock like any router, but it is not
    deployable and ``describe`` says so.
    """

    def __init__(self, model_names: list[str], chosen: np.ndarray, what: str = "assignment"):
        self.model_names = list(model_names)
        self.chosen = check_choices(chosen, len(model_names))
        self.what = what

    def route(self, images: torch.Tensor) -> np.ndarray:
        if len(images) != len(self.chosen):
            raise RouterError(f"this {self.what} router holds {len(self.chosen)} choices but got "
                              f"{len(images)} images; build it for exactly these inputs")
        return self.chosen.copy()

    def describe(self) -> dict[str, Any]:
        return {"type": self.what, "deployable": False}


def check_choices(chosen: Any, n_models: int) -> np.ndarray:
    """Validate (N,) integer model indices in [0, n_models)."""
    c = np.asarray(chosen)
    if c.ndim != 1 or (c.size and not np.issubdtype(c.dtype, np.integer)):
        raise RouterError(f"choices must be a 1-D integer array, got shape {c.shape} dtype {c.dtype}")
    if c.size and (c.min() < 0 or c.max() >= n_models):
        raise RouterError(f"choices must lie in [0, {n_models}), got [{c.min()}, {c.max()}]")
    return c.astype(np.int64)


def table_precision(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """Scores rounded through float16, as prediction tables store probabilities.

    Rounding is monotone and thresholds are float16 values, so a threshold fitted on a table
    stops exactly the inputs whose live (float32) scores round to the same table value.
    """
    if torch.is_tensor(scores):
        scores = scores.detach().cpu().numpy()
    return np.asarray(scores, dtype=np.float32).astype(np.float16).astype(np.float32)


def first_confident(scores: np.ndarray, thresholds: np.ndarray | float,
                    fallback: int | np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """(N,) the first column (in ``order``, default 0..K-1) whose score >= its threshold.

    ``scores`` (N, K); ``thresholds`` scalar or (K,); ``fallback`` (scalar or (N,)) where no
    column clears. NaN scores never clear. This is the one threshold rule of all routers.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2:
        raise RouterError(f"scores must be (N, K), got shape {scores.shape}")
    k = scores.shape[1]
    order = np.arange(k) if order is None else np.asarray(order, dtype=np.int64)
    th = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (k,))
    clears = scores[:, order] >= th[order][None, :]           # NaN >= t is False
    any_clear = clears.any(axis=1)
    first = order[np.argmax(clears, axis=1)]
    fb = np.broadcast_to(np.asarray(fallback, dtype=np.int64), (len(scores),))
    return np.where(any_clear, first, fb).astype(np.int64)


def least_cost_meeting(accuracy: np.ndarray, cost: np.ndarray, target: float) -> int:
    """Index of the cheapest candidate with ``accuracy >= target`` (ties: more accurate, then first).

    Raises ``RouterError`` when no candidate meets the target (callers include a setting that
    reproduces the reference model, so this means the inputs were inconsistent).
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    ok = np.flatnonzero(accuracy >= target - _EPS)
    if ok.size == 0:
        raise RouterError(f"no candidate reaches accuracy {target:.4f} (best "
                          f"{accuracy.max(initial=float('nan')):.4f}); include the reference "
                          "model among the candidates")
    best = ok[np.lexsort((ok, -accuracy[ok], cost[ok]))[0]]
    return int(best)


def paired_se(n_gain: np.ndarray | int, n_loss: np.ndarray | int, n: int) -> np.ndarray:
    """Standard error of a setting's accuracy difference to the reference on the same n samples.

    ``n_gain``: samples the setting gets right and the reference wrong; ``n_loss``: the reverse.
    The per-sample difference d is +1, -1 or 0, so SE = sqrt(var(d) / n) with the sample
    variance (a setting that always agrees with the reference has SE 0).
    """
    g = np.asarray(n_gain, dtype=np.float64)
    l_ = np.asarray(n_loss, dtype=np.float64)
    if n < 2:
        return np.zeros_like(g)
    mean = (g - l_) / n
    var = np.maximum(0.0, ((g + l_) / n - mean ** 2) * n / (n - 1))
    return np.sqrt(var / n)


def accuracy_lower_bound(correct: np.ndarray, reference: np.ndarray, z: float) -> np.ndarray:
    """(G,) accuracy minus z paired standard errors, for settings' correctness (G, n) or (n,).

    Selecting the cheapest of many settings whose validation accuracy just meets a target is
    optimistic (the winner is the one the noise favoured); requiring the bound to meet it is
    the one-standard-error rule at z = 1. The reference itself has SE 0, so it always passes.
    """
    c = np.atleast_2d(np.asarray(correct, dtype=bool))
    r = np.asarray(reference, dtype=bool)[None, :]
    n = c.shape[1]
    acc = c.mean(axis=1)
    if z == 0:
        return acc
    se = paired_se((c & ~r).sum(axis=1), (~c & r).sum(axis=1), n)
    return acc - z * se


def gain_se(correct: np.ndarray, reference: np.ndarray) -> float:
    """Paired standard error of (accuracy - the reference's accuracy) on the same samples
    (``paired_se``; 0 where the two are right on exactly the same samples)."""
    c = np.asarray(correct, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if c.shape != r.shape or c.ndim != 1:
        raise RouterError(f"correct and reference must be the same (n,) shape, got {c.shape} "
                          f"and {r.shape}")
    return float(paired_se(int(np.sum(c & ~r)), int(np.sum(~c & r)), len(c)))


def budget_margin_se(correct: np.ndarray, reference: np.ndarray, sacrifice: float) -> float | None:
    """How far a router's accuracy is above its budget, in paired standard errors on the same
    samples: (acc - (ref_acc - sacrifice)) / SE(acc - ref_acc). Negative: the budget was
    missed; -0.5 means by half a standard error, which the sample's noise alone makes likely.
    None where the SE is 0 (the router is right exactly where the reference is)."""
    c = np.asarray(correct, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    se = gain_se(c, r)
    if se <= 0:
        return None
    return float((c.mean() - (r.mean() - sacrifice)) / se)
