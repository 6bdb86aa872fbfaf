"""The committee cascade as a router kind: each stage adds a model to a growing committee,
answers with the committee's mean probability, and stops where its members agree.

Agreement-based cascading (Kolawole et al., TMLR 2025) and cascades of committees (Wang et
al., "Wisdom of Committees", ICLR 2022): a stage answers when the models run so far agree,
not when one model is confident. Stage j of a chain (m_1 < m_2 < ... in cost) holds the
committee {m_1..m_j}; an input that reaches it is run through m_j only: the earlier members'
probabilities are reused. The stage's answer is the argmax of the members' mean probability
(each rounded to table precision, summed in stage order, so a live run and a table
simulation agree exactly); it stops when

- the share of members whose own top class is that answer is at least ``agreement``
  (1.0: all agree; a one-model stage always agrees with itself), and
- the mean probability of the answer is at least the stage's threshold,

else the input goes on; the last stage answers whatever is left. Because the answer is the
committee's, not the last model's, a committee cascade can be more accurate than its most
accurate member: what a negative level asks for.

Per zoo every increasing chain of up to ``max_stages`` models is simulated with every
threshold combination of a grid (``router.cascade.sweep_chain`` on the committee's per-stage
scores and answers); each level is then a lookup, as for the confidence cascade.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from common.tables import PredictionTable
from router.base import RouterError, first_confident, least_cost_meeting, table_precision
from router.cascade import CascadeRouter, chain_at, single_stage_index, sweep_chain, \
    sweep_chains, threshold_grid
from router.certify import PoolEntry
from router.execute import ExecResult, ModelClock, escalated_seconds, timed_logits
from router.kind import KindStyle, RouterKind, TestView, candidate
from router.kind_cascade import CascadeKind, cached_chain_entries
from router.selection import Candidate
from zoo.data import DatasetInfo

AGREEMENT = 1.0          # share of the committee that must vote for its answer (1: all)
NEVER = -1.0             # the score of a stage whose members disagree: it never stops


def committee_stages(probs: np.ndarray, agreement: float = AGREEMENT
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-stage scores and answers of a growing committee.

    ``probs`` (N, S, C): each stage's model's class probabilities at table precision, in stage
    order. Returns ``scores`` (N, S): the committee's mean probability of its answer where at
    least ``agreement`` of its members vote for that answer, else ``NEVER``; and ``answers``
    (N, S): the argmax of the mean probability of the first j + 1 models."""
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3:
        raise RouterError(f"probs must be (N, S, C), got shape {p.shape}")
    n, s, c = p.shape
    rows = np.arange(n)
    running = np.zeros((n, c), dtype=np.float32)
    votes = np.zeros((n, c), dtype=np.int64)
    scores = np.empty((n, s), dtype=np.float32)
    answers = np.empty((n, s), dtype=np.int64)
    for j in range(s):
        running += p[:, j]
        votes[rows, p[:, j].argmax(axis=1)] += 1
        mean = running / np.float32(j + 1)
        ans = mean.argmax(axis=1)
        share = votes[rows, ans] / (j + 1)
        scores[:, j] = np.where(share >= agreement - 1e-9, mean[rows, ans], NEVER)
        answers[:, j] = ans
    return scores, answers


def simulate_committee(probs: np.ndarray, stages: Sequence[int], thresholds: Sequence[float],
                       agreement: float = AGREEMENT) -> tuple[np.ndarray, np.ndarray]:
    """(chosen (N,) the last model run per input, preds (N,) the committee's answers) of a
    committee cascade on table probabilities ``probs`` (N, M, C)."""
    stages = [int(m) for m in stages]
    scores, answers = committee_stages(table_precision(probs[:, stages]), agreement)
    th = np.asarray(thresholds, dtype=np.float32).copy()
    th[-1] = -np.inf                                      # the last stage answers the rest
    stop = first_confident(scores, th, fallback=len(stages) - 1)
    rows = np.arange(len(stop))
    return np.asarray(stages)[stop], answers[rows, stop]


@dataclass
class CommitteeCandidates:
    """Every simulated committee cascade of one table (a level's fit is a lookup)."""

    chains: list[list[int]]
    chain_of: np.ndarray             # (G,) chain of each candidate
    thresholds: list[np.ndarray]     # (G,) len(chain) - 1 thresholds each
    accuracy: np.ndarray             # (G,)
    cost: np.ndarray                 # (G,) expected ms per image
    se: np.ndarray                   # (G,) paired SE of the accuracy difference to the reference


def committee_candidates(val: PredictionTable, costs: np.ndarray, reference: int, *,
                         max_stages: int = 3, grid: int = 24,
                         agreement: float = AGREEMENT) -> CommitteeCandidates:
    """Simulate every increasing chain of <= ``max_stages`` models (in cost order) on ``val``
    for every combination of per-stage thresholds from a grid of its scores' quantiles."""
    costs = np.asarray(costs, dtype=np.float64)
    order = [int(i) for i in np.lexsort((np.arange(val.n_models), costs))]
    probs = table_precision(val.probs)
    ref_right = val.correct[:, reference]

    def sweep(chain: list[int]):
        scores, answers = committee_stages(probs[:, chain], agreement)
        grids = [threshold_grid(scores[:, j], grid, table=False) for j in range(len(chain) - 1)]
        return sweep_chain(scores, answers == val.labels[:, None], costs[chain],
                           list(range(len(chain))), grids, ref_right)
    return CommitteeCandidates(*sweep_chains(order, max_stages, val.n_samples, sweep))


class CommitteeCascadeRouter(CascadeRouter):
    """A fitted committee cascade; ``run`` executes it (models attached, as a cascade)."""

    def __init__(self, model_names: list[str], stages: Sequence[int],
                 thresholds: Sequence[float], agreement: float = AGREEMENT):
        super().__init__(model_names, stages, thresholds)
        if not 0.0 < agreement <= 1.0:
            raise RouterError(f"agreement is a share of the committee in (0, 1], got {agreement}")
        self.agreement = float(agreement)

    def run(self, images: torch.Tensor) -> ExecResult:
        if self.models is None or self.infos is None:
            raise RouterError("a cascade routes by running its models: call attach(models, infos)")
        return execute_committee(self.stages, self.thresholds, images, self.models, self.infos,
                                 self.batch_size, self.agreement)

    def simulate_table(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, preds) from table probabilities (N, M, C)."""
        return simulate_committee(probs, self.stages, self.thresholds, self.agreement)

    @property
    def stop_words(self) -> str:                     # type: ignore[override]
        return (f"whose committee (the models run so far) agrees (share >= {self.agreement:g}) "
                "with mean probability >= its threshold")

    def stage_score_names(self) -> list[str]:
        return [f"committee:{'+'.join(self.model_names[m] for m in self.stages[:j + 1])}"
                for j in range(len(self.stages))]

    def last_words(self) -> str:
        return f"the whole committee up to {self.model_names[self.stages[-1]]}"

    def describe(self) -> dict[str, Any]:
        return {"type": "committee-cascade", "stages": [self.model_names[s] for s in self.stages],
                "thresholds": self.thresholds[:-1], "agreement": self.agreement}


def execute_committee(stages: Sequence[int], thresholds: Sequence[float], images: torch.Tensor,
                      models: Sequence[torch.nn.Module], infos: Sequence[Any],
                      batch_size: int = 256, agreement: float = AGREEMENT) -> ExecResult:
    """Run the committee cascade for real: stage j runs its model on the inputs still open,
    adds its (table-precision) probabilities to theirs and stops where the committee agrees
    with enough mean probability; the committee's answer is kept. Model time is clocked
    apart from the rest (softmax, votes, gathering: router time); ``wasted_seconds`` counts the
    non-final stages' time on inputs that went on."""
    clock = ModelClock()
    t0 = time.perf_counter()
    n = len(images)
    preds = np.empty(n, dtype=np.int64)
    conf = np.empty(n, dtype=np.float32)
    chosen = np.full(n, int(stages[-1]), dtype=np.int64)
    stage_conf = np.full((n, len(stages)), np.nan, dtype=np.float32)
    todo = np.arange(n)
    running: np.ndarray | None = None       # (n_todo, C) sum of the members' probabilities
    votes: np.ndarray | None = None
    wasted = 0.0
    for k, (m, th) in enumerate(zip(stages, thresholds)):
        if len(todo) == 0:
            break
        batch_seconds: list[float] = []
        logits = timed_logits(models[m], images.index_select(0, torch.from_numpy(todo)),
                              infos[m], batch_size, clock, batch_seconds)
        p = table_precision(torch.softmax(logits, dim=1))
        if running is None:
            running = np.zeros_like(p)
            votes = np.zeros(p.shape, dtype=np.int64)
        rows = np.arange(len(todo))
        running += p
        votes[rows, p.argmax(axis=1)] += 1
        mean = running / np.float32(k + 1)
        ans = mean.argmax(axis=1)
        score = np.where(votes[rows, ans] / (k + 1) >= agreement - 1e-9, mean[rows, ans], NEVER)
        stage_conf[todo, k] = score
        last = k == len(stages) - 1
        stop = (np.ones(len(todo), dtype=bool) if last else
                first_confident(score[:, None].astype(np.float32), th, fallback=-1) == 0)
        if not last:
            wasted += escalated_seconds(batch_seconds, ~stop, batch_size)
        done = todo[stop]
        preds[done], conf[done], chosen[done] = ans[stop], mean[rows, ans][stop], int(m)
        todo, running, votes = todo[~stop], running[~stop], votes[~stop]
    return ExecResult(preds, chosen, time.perf_counter() - t0, clock.model_seconds, conf,
                      stage_conf, wasted)


class CommitteeCascadeKind(RouterKind):
    """Growing committees, cheap first; a stage stops where its members agree."""

    name = "committee-cascade"
    family = "committee"
    style = KindStyle("darkviolet", "X", 6.0)
    simplicity = 2
    router_types = (CommitteeCascadeRouter,)
    description = "cascade of growing committees that stops where the committee agrees"

    def prepare(self) -> CommitteeCandidates:
        s, t0 = self.ctx.settings, time.perf_counter()
        cands = committee_candidates(self.ctx.val, self.cvec, self.ctx.ref,
                                     max_stages=s.max_stages,
                                     grid=s.committee_grid or s.grid)
        self.ctx.record["committee_cascade"] = {"candidates": int(len(cands.accuracy)),
                                                "agreement": AGREEMENT,
                                                "fit_seconds": time.perf_counter() - t0}
        return cands

    def _set(self, i: int, cand: Candidate) -> "CommitteeCascadeKind":
        cc = self.prepared()
        self.router_ = CommitteeCascadeRouter(self.ctx.names, *chain_at(cc, i))
        self.candidate_ = cand
        self.details_ = {"val_se": float(cc.se[i])}
        return self

    def fit(self, sacrifice: float, target: float) -> "CommitteeCascadeKind":
        cc = self.prepared()
        i = least_cost_meeting(cc.accuracy - self.ctx.settings.margin_z * cc.se, cc.cost, target)
        return self._set(i, candidate(self, cc.accuracy[i], cc.cost[i], True))

    def path_entries(self, sacrifice: float) -> list[PoolEntry]:
        return cached_chain_entries(self)

    def correct_on_certify(self, entry: PoolEntry) -> np.ndarray:
        return self.correct_on(entry, self.ctx.certify)

    def correct_on(self, entry: PoolEntry, table: PredictionTable) -> np.ndarray:
        """(n,) whether candidate ``entry`` answers each image of ``table`` right."""
        _, preds = simulate_committee(table.probs, *chain_at(self.prepared(), entry.key))
        return preds == table.labels

    def fit_entry(self, entry: PoolEntry | None, sacrifice: float,
                  cand: Candidate) -> "CommitteeCascadeKind":
        return self._set(int(entry.key) if entry is not None
                         else single_stage_index(self.prepared(), self.ctx.ref), cand)

    def _on_test(self, test: TestView) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, preds) on the test table, simulated once per fitted router."""
        key = f"{self.name}:{id(self.router_)}"
        if key not in test.shared:
            test.shared[key] = self.router_.simulate_table(test.table.probs)
        return test.shared[key]

    def simulate(self, test: TestView) -> np.ndarray:
        return self._on_test(test)[0]

    def predictions(self, test: TestView, chosen: np.ndarray) -> np.ndarray:
        return self._on_test(test)[1]

    def stages(self) -> Sequence[int]:
        return self.router_.stages

    def timing_key(self) -> tuple:
        return (self.name, tuple(self.router_.stages), tuple(self.router_.thresholds))

    def run(self, images: torch.Tensor, models: Sequence[torch.nn.Module], infos: Sequence[Any],
            batch_size: int) -> ExecResult:
        r = self.router_
        return execute_committee(r.stages, r.thresholds, images, models, infos, batch_size,
                                 r.agreement)

    @classmethod
    def state(cls, router: CommitteeCascadeRouter) -> dict[str, Any]:
        return {"stages": router.stages, "thresholds": router.thresholds,
                "agreement": router.agreement}

    @classmethod
    def from_state(cls, state: dict[str, Any], model_names: list[str],
                   info: DatasetInfo | None) -> CommitteeCascadeRouter:
        return CommitteeCascadeRouter(model_names, state["stages"], state["thresholds"],
                                      float(state.get("agreement", AGREEMENT)))

    @classmethod
    def needed_models(cls, router: CommitteeCascadeRouter, n_models: int) -> set[int]:
        return set(router.stages)

    why = CascadeKind.why
