"""The learned cascade as a router kind (``router.deferral`` holds the heads and their search).

Per zoo it fits a deferral head per model (cross-fitted on the table it chooses on) and
simulates every cascade with the heads' scores; each stage also pays its head's time
(``KindContext.head_ms``). Under certified selection its candidates are tested after the
table-simulated kinds' (``path_group = 1``, with the dispatchers): its heads are fitted on the
select part, so its estimates there are the more optimistic.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from router.base import Router
from router.cascade import cascade_fit_at, single_stage_index
from router.certify import PoolEntry
from router.deferral import DeferralHead, LearnedCandidates, LearnedCascadeFit, \
    LearnedCascadeRouter, learned_candidates, select_learned
from router.execute import ExecResult, execute_cascade
from router.kind import KindStyle, RouterKind, TestView, candidate
from router.kind_cascade import CascadeKind, chain_entries
from router.selection import Candidate
from zoo.data import DatasetInfo


def learned_fit_at(lc: LearnedCandidates, i: int, target: float) -> LearnedCascadeFit:
    """The learned cascade of candidate ``i`` with its heads."""
    fit = cascade_fit_at(lc.cands, i)
    return LearnedCascadeFit(fit, [lc.heads[m] for m in fit.stages[:-1]], target,
                             len(lc.fit_index), len(lc.threshold_index))


class LearnedCascadeKind(RouterKind):
    """A cascade whose stages stop on a learned deferral head's score, not max-softmax."""

    name = "learned-cascade"
    family = "learned"
    style = KindStyle("tab:cyan", "P", 6.0)
    simplicity = 2
    path_group = 1          # its heads are fitted on the select part: tested after group 0
    router_types = (LearnedCascadeRouter,)
    description = "cascade with learned deferral heads (logistic regression per model)"

    @property
    def cvec(self) -> np.ndarray:
        return self.ctx.cvec + self.ctx.head_ms

    def prepare(self) -> LearnedCandidates:
        s, val = self.ctx.settings, self.ctx.val
        folds = (s.learned_folds if s.learned_folds == 0 or val.n_samples >= 2 * s.learned_folds
                 else 0)                    # too few images to cross-fit: one split
        t0 = time.perf_counter()
        lc = learned_candidates(val, self.cvec, reference=self.ctx.ref, max_stages=s.max_stages,
                                grid=s.grid, folds=folds, fit_share=s.learned_fit_share,
                                seed=s.seed)
        self.ctx.record["learned_cascade"] = {
            "folds": lc.folds, "fit_samples": int(len(lc.fit_index)),
            "threshold_samples": int(len(lc.threshold_index)),
            "candidates": int(len(lc.cands.accuracy)),
            "reference_threshold_accuracy": lc.reference_accuracy,
            "fit_seconds": time.perf_counter() - t0,
            "heads": {n: h.state() for n, h in zip(self.ctx.names, lc.heads)}}
        return lc

    def _set(self, fit: LearnedCascadeFit, cand: Candidate) -> "LearnedCascadeKind":
        self.fit_ = fit
        self.router_ = LearnedCascadeRouter.from_fit(fit)
        self.candidate_ = cand
        c = fit.cascade
        self.details_ = {"val_stage_reach": c.stage_reach, "val_se": c.val_se, "z": c.z,
                         "val_target": fit.target, "fit_samples": fit.fit_samples,
                         "threshold_samples": fit.threshold_samples}
        return self

    def fit(self, sacrifice: float, target: float) -> "LearnedCascadeKind":
        lfit = select_learned(self.prepared(), sacrifice, z=self.ctx.settings.margin_z)
        return self._set(lfit, candidate(self, lfit.val_accuracy, lfit.val_cost, True))

    def path_entries(self, sacrifice: float) -> list[PoolEntry]:
        lc = self.prepared()
        return chain_entries(self.name, lc.cands, lc.reference_accuracy, len(lc.threshold_index))

    def correct_on_certify(self, entry: PoolEntry) -> np.ndarray:
        val_c = self.ctx.certify
        router = LearnedCascadeRouter.from_fit(learned_fit_at(self.prepared(), int(entry.key),
                                                              0.0))
        return val_c.correct[np.arange(val_c.n_samples), router.simulate(val_c.probs)]

    def fit_entry(self, entry: PoolEntry | None, sacrifice: float,
                  cand: Candidate) -> "LearnedCascadeKind":
        lc = self.prepared()
        key = int(entry.key) if entry is not None else single_stage_index(lc.cands, self.ctx.ref)
        return self._set(learned_fit_at(lc, key, self.ctx.ref_accuracy - sacrifice), cand)

    def simulate(self, test: TestView) -> np.ndarray:
        return self.router_.simulate(test.table.probs)

    def stages(self) -> Sequence[int]:
        return self.fit_.cascade.stages

    def timing_key(self) -> tuple:
        c = self.fit_.cascade
        return (self.name, tuple(c.stages), tuple(c.thresholds))

    def run(self, images: torch.Tensor, models: Sequence[torch.nn.Module], infos: Sequence[Any],
            batch_size: int) -> ExecResult:
        r = self.router_
        return execute_cascade(r.stages, r.thresholds, images, models, infos, batch_size,
                               scorers=r.scorers())

    @classmethod
    def state(cls, router: Router) -> dict[str, Any]:
        return {"stages": router.stages, "thresholds": router.thresholds,
                "heads": [h.state() for h in router.heads]}

    @classmethod
    def from_state(cls, state: dict[str, Any], model_names: list[str],
                   info: DatasetInfo | None) -> Router:
        return LearnedCascadeRouter(model_names, state["stages"], state["thresholds"],
                                    [DeferralHead.from_state(h) for h in state["heads"]])

    @classmethod
    def needed_models(cls, router: Router, n_models: int) -> set[int]:
        return set(router.stages)

    why = CascadeKind.why
