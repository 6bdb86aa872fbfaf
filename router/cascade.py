"""Confidence cascade: run models cheap -> expensive, stop at the first confident answer.

A cascade is a list of stages (model indices, rising cost) and one threshold per stage (the
last stage answers whatever is left, its threshold is ignored). Stage k keeps an input when
its top softmax probability >= threshold k (``router.base.first_confident``).

``fit_cascade`` chooses stages and thresholds on the validation table by simulation: every
increasing chain of at most ``max_stages`` models and every combination of thresholds from a
grid of confidence quantiles; the expected cost of a chain is the sum over stages of the
share of inputs reaching the stage times the stage's cost. The cheapest chain whose simulated
validation accuracy is at least ``target`` wins (the reference model alone is always a
candidate, so a solution exists). With ``z`` > 0 the accuracy that must meet the target is
the candidate's minus z paired standard errors of its difference to the reference
(``router.base.accuracy_lower_bound``: the one-standard-error rule at z = 1), which keeps the
selection among ~10^5 candidates from picking the one validation noise flattered most.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from common.tables import PredictionTable
from oracle.policy import reference_index
from router.base import Router, RouterError, Routing, first_confident, least_cost_meeting, \
    paired_se, table_precision
from router.execute import execute_cascade


@dataclass
class CascadeFit:
    """A fitted cascade with what the fit measured on validation."""

    stages: list[int]
    thresholds: list[float]
    model_names: list[str]
    val_accuracy: float
    val_cost: float                  # expected cost per image on val (units of ``costs``)
    stage_reach: list[float] = field(default_factory=list)  # share of val inputs reaching each stage
    candidates: int = 0
    val_se: float = 0.0              # paired SE of its val accuracy difference to the reference
    z: float = 0.0                   # margin used: val_accuracy - z * val_se >= target


def simulate_cascade(confidence: np.ndarray, stages: Sequence[int],
                     thresholds: Sequence[float]) -> np.ndarray:
    """(N,) index of the model that answers each input, from table confidences (N, M)."""
    stages = np.asarray(stages, dtype=np.int64)
    th = np.asarray(thresholds, dtype=np.float32).copy()
    th[-1] = -np.inf                                    # the last stage answers the rest
    stage = first_confident(confidence[:, stages], th, fallback=len(stages) - 1)
    return stages[stage]


def threshold_grid(confidence: np.ndarray, n: int, table: bool = True) -> np.ndarray:
    """Candidate thresholds for one model: 0, its confidence quantiles, and above 1 (never stop).

    ``table``: round the quantiles to table precision (scores that are not float16 table
    values, such as a deferral head's, keep float32 quantiles)."""
    q = np.quantile(confidence, np.linspace(0.0, 1.0, n + 1)[:-1])
    q = table_precision(q) if table else q.astype(np.float32)
    return np.unique(np.concatenate([[0.0], q, [1.0, 1.01]])).astype(np.float32)


@dataclass
class CascadeCandidates:
    """Every simulated cascade of one validation table: a fit per target is a lookup."""

    model_names: list[str]
    chains: list[list[int]]          # (P,) stage lists
    chain_of: np.ndarray             # (G,) index into chains for each candidate
    thresholds: list[np.ndarray]     # (G,) arrays of len(chain) - 1 thresholds
    accuracy: np.ndarray             # (G,) simulated val accuracy
    cost: np.ndarray                 # (G,) expected cost per image
    confidence: np.ndarray           # (N, M) val confidences at table precision, or the scores
    se: np.ndarray                   # (G,) paired SE of the accuracy difference to the reference
    reference: int = -1


def cascade_candidates(val: PredictionTable, costs: np.ndarray, *, max_stages: int = 3,
                       grid: int = 24, reference: int | None = None,
                       scores: np.ndarray | None = None) -> CascadeCandidates:
    """Simulate every increasing chain of <= ``max_stages`` models on ``val`` for every
    threshold combination from ``threshold_grid``; ``costs`` (M,) in table order.

    ``reference`` (default: the most accurate model on ``val``, cheaper on ties) is what each
    candidate's paired standard error is measured against. ``scores`` (N, M), when given,
    replace the confidences as what each stage's threshold is compared with (a learned
    cascade's deferral scores, ``router.deferral``); they are used as given (float32)."""
    costs = np.asarray(costs, dtype=np.float64)
    if costs.shape != (val.n_models,):
        raise RouterError(f"costs has shape {costs.shape}, expected ({val.n_models},) in table order")
    if max_stages < 1:
        raise RouterError(f"max_stages must be >= 1, got {max_stages}")
    if scores is None:
        conf = table_precision(val.confidence)                      # (N, M)
    else:
        conf = np.asarray(scores, dtype=np.float32)
        if conf.shape != (val.n_samples, val.n_models):
            raise RouterError(f"scores has shape {conf.shape}, expected "
                              f"({val.n_samples}, {val.n_models})")
    correct = val.correct                                           # (N, M)
    if reference is None:
        reference = reference_index(val, costs)
    ref_right = correct[:, reference]
    order = [int(i) for i in np.lexsort((np.arange(val.n_models), costs))]
    grids = [threshold_grid(conf[:, m], grid, table=scores is None) for m in range(val.n_models)]
    chains, chain_of, ths, accs, cost, ses = sweep_chains(
        order, max_stages, val.n_samples,
        lambda chain: sweep_chain(conf, correct, costs, chain, [grids[m] for m in chain[:-1]],
                                  ref_right))
    return CascadeCandidates(list(val.model_names), chains, chain_of, ths, accs, cost, conf, ses,
                             int(reference))


def sweep_chains(order: Sequence[int], max_stages: int, n: int,
                 sweep: Any) -> tuple[list[list[int]], np.ndarray, list[np.ndarray], np.ndarray,
                                      np.ndarray, np.ndarray]:
    """Every increasing chain (in ``order``) of 1..``max_stages`` models through ``sweep``
    (chain -> accuracies, costs, thresholds, gains, losses, as ``sweep_chain`` returns them),
    stacked: (chains, chain of each candidate, thresholds, accuracy, cost, paired SE on ``n``
    images)."""
    chains, chain_of, ths, accs, cost, ses = [], [], [], [], [], []
    for k in range(1, max_stages + 1):
        for chain in itertools.combinations(order, k):
            a, c, t, gain, loss = sweep(list(chain))
            chain_of.append(np.full(len(a), len(chains)))
            chains.append(list(chain))
            ths.extend(list(t))
            accs.append(a)
            cost.append(c)
            ses.append(paired_se(gain, loss, n))
    return (chains, np.concatenate(chain_of), ths, np.concatenate(accs), np.concatenate(cost),
            np.concatenate(ses))


def select_cascade(cands: CascadeCandidates, target: float, z: float = 0.0) -> CascadeFit:
    """The cheapest candidate whose simulated val accuracy - ``z`` paired SEs >= ``target``."""
    if z < 0:
        raise RouterError(f"the margin z must be >= 0 standard errors, got {z}")
    bound = cands.accuracy - z * cands.se
    try:
        i = least_cost_meeting(bound, cands.cost, target)
    except RouterError:
        raise RouterError(f"no cascade reaches val accuracy {target:.4f}: the target is above "
                          f"every candidate ({bound.max():.4f})") from None
    return cascade_fit_at(cands, i, z)


def chain_at(cands: Any, i: int) -> tuple[list[int], list[float]]:
    """Candidate ``i``'s stages and thresholds, one per stage (the last one's, never read, is
    0): for any candidate set holding ``chains``, ``chain_of`` and ``thresholds``."""
    stages = list(cands.chains[int(cands.chain_of[i])])
    return stages, [float(t) for t in cands.thresholds[i]] + [0.0]


def cascade_fit_at(cands: CascadeCandidates, i: int, z: float = 0.0) -> CascadeFit:
    """The ``CascadeFit`` of candidate ``i`` (its chain, thresholds and val figures)."""
    stages, th = chain_at(cands, i)
    chosen = simulate_cascade(cands.confidence, stages, th)
    reach = [1.0] + [float(np.mean(~np.isin(chosen, stages[:j]))) for j in range(1, len(stages))]
    return CascadeFit(stages=list(stages), thresholds=th, model_names=list(cands.model_names),
                      val_accuracy=float(cands.accuracy[i]), val_cost=float(cands.cost[i]),
                      stage_reach=reach, candidates=len(cands.accuracy),
                      val_se=float(cands.se[i]), z=float(z))


def single_stage_index(cands: CascadeCandidates, model: int) -> int:
    """The candidate that is ``model`` alone (every candidate set holds each one-stage chain)."""
    for c, chain in enumerate(cands.chains):
        if chain == [model]:
            return int(np.flatnonzero(cands.chain_of == c)[0])
    raise RouterError(f"model {model} has no one-stage candidate")


def fit_cascade(val: PredictionTable, costs: np.ndarray, target: float, *,
                max_stages: int = 3, grid: int = 24, z: float = 0.0,
                reference: int | None = None) -> CascadeFit:
    """Cheapest cascade (stages, thresholds) whose simulated val accuracy (minus ``z`` paired
    SEs to the reference) >= ``target``."""
    return select_cascade(cascade_candidates(val, costs, max_stages=max_stages, grid=grid,
                                             reference=reference), target, z)


def sweep_chain(conf: np.ndarray, correct: np.ndarray, costs: np.ndarray, chain: list[int],
                 grids: list[np.ndarray], ref_right: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy and expected cost of ``chain`` for every threshold combination (vectorised).

    Returns accs (G,), cost (G,), thresholds (G, len(chain) - 1), and the counts of samples
    each combination gets right where the reference is wrong (gain) and the reverse (loss).
    """
    n = len(conf)
    if len(chain) == 1:
        r = correct[:, chain[0]]
        return (np.array([r.mean()]), np.array([costs[chain[0]]]), np.zeros((1, 0)),
                np.array([np.sum(r & ~ref_right)]), np.array([np.sum(~r & ref_right)]))
    combos = np.array(list(itertools.product(*grids)), dtype=np.float32)  # (G, k-1)
    alive = np.ones((len(combos), n), dtype=bool)       # input still unanswered before stage j
    right = np.zeros((len(combos), n), dtype=bool)
    cost = np.zeros(len(combos))
    for j, m in enumerate(chain):
        cost += alive.mean(axis=1) * costs[m]
        if j == len(chain) - 1:
            stop = alive
        else:
            stop = alive & (conf[None, :, m] >= combos[:, j, None])
        right |= stop & correct[None, :, m]
        alive &= ~stop
    gain = (right & ~ref_right[None, :]).sum(axis=1)
    loss = (~right & ref_right[None, :]).sum(axis=1)
    return right.mean(axis=1), cost, combos, gain, loss


class CascadeRouter(Router):
    """A fitted cascade; ``route`` runs the stages (it needs the zoo models attached)."""

    runs_models = True

    def __init__(self, model_names: list[str], stages: Sequence[int], thresholds: Sequence[float]):
        self.model_names = list(model_names)
        self.stages = [int(s) for s in stages]
        self.thresholds = [float(t) for t in thresholds]
        if not self.stages or len(self.thresholds) != len(self.stages):
            raise RouterError("a cascade needs at least one stage and one threshold per stage")
        if any(not 0 <= s < len(self.model_names) for s in self.stages):
            raise RouterError(f"stage indices {self.stages} out of range for {self.model_names}")
        self.models: list[torch.nn.Module] | None = None
        self.infos: list[Any] | None = None
        self.batch_size = 256

    @classmethod
    def from_fit(cls, fit: CascadeFit) -> "CascadeRouter":
        return cls(fit.model_names, fit.stages, fit.thresholds)

    def attach(self, models: Sequence[torch.nn.Module], infos: Sequence[Any],
               batch_size: int = 256) -> "CascadeRouter":
        self.models, self.infos, self.batch_size = list(models), list(infos), batch_size
        return self

    def run(self, images: torch.Tensor):
        if self.models is None or self.infos is None:
            raise RouterError("a cascade routes by running its models: call attach(models, infos)")
        return execute_cascade(self.stages, self.thresholds, images, self.models, self.infos,
                               self.batch_size)

    def route(self, images: torch.Tensor) -> np.ndarray:
        return self.run(images).chosen

    def simulate(self, confidence: np.ndarray) -> np.ndarray:
        return simulate_cascade(table_precision(confidence), self.stages, self.thresholds)

    def explain(self, images: torch.Tensor) -> Routing:
        """Each stage's confidence on each input (NaN for stages the input never reached)."""
        return self.routing_of(self.run(images))

    # what a stage's score is, in the rule's words (subclasses score stages otherwise)
    stop_words = "whose confidence >= its threshold"

    def stage_score_names(self) -> list[str]:
        """What each stage's score is (``Routing.score_names``)."""
        return [f"confidence:{self.model_names[m]}" for m in self.stages]

    def last_words(self) -> str:
        """Who answers the inputs no stage kept."""
        return self.model_names[self.stages[-1]]

    def routing_of(self, res) -> Routing:
        """The ``Routing`` (scores = per-stage scores) behind an executed result."""
        rule = (f"stop at the first stage {self.stop_words} ("
                + ", ".join(f"{self.model_names[m]}>={t:.4g}" for m, t in
                            zip(self.stages[:-1], self.thresholds[:-1]))
                + f"), else {self.last_words()}")
        return Routing(chosen=res.chosen, scores=res.stage_confidence,
                       score_names=self.stage_score_names(), rule=rule)

    def describe(self) -> dict[str, Any]:
        return {"type": "cascade", "stages": [self.model_names[s] for s in self.stages],
                "thresholds": self.thresholds[:-1]}
