"""The confidence cascade as a router kind (``router.cascade`` holds the rule and its search).

Per zoo it simulates every increasing chain of up to ``max_stages`` models and every
threshold combination of a grid on the table it chooses on (``cascade_candidates``); each
level's fit is then a lookup: the cheapest chain whose val accuracy minus the margin meets the
target (estimate rule), or the chains on the level's certified path.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from common.tables import PredictionTable
from router.base import Router, table_precision
from router.cascade import CascadeCandidates, CascadeFit, CascadeRouter, cascade_candidates, \
    cascade_fit_at, chain_at, select_cascade, simulate_cascade, single_stage_index
from router.certify import PoolEntry
from router.execute import ExecResult, execute_cascade
from router.kind import KindStyle, RouterKind, TestView, candidate
from router.selection import Candidate
from zoo.data import DatasetInfo


def chain_entries(kind: str, cands: Any, ref_accuracy: float, n: int) -> list[PoolEntry]:
    """A certified path's entries for every simulated chain of two or more stages (a chain of
    one is a single model, pooled already): ``cands`` holds ``chains``, ``chain_of``,
    ``accuracy``, ``cost`` and ``se`` per candidate, estimated on ``n`` images against a
    reference of accuracy ``ref_accuracy`` there."""
    lengths = np.array([len(c) for c in cands.chains])
    keep = np.flatnonzero(lengths[np.asarray(cands.chain_of, dtype=np.int64)] > 1)
    drop = (ref_accuracy - np.asarray(cands.accuracy, dtype=np.float64)[keep]).tolist()
    return [PoolEntry(kind, i, c, d, e, n) for i, c, d, e in
            zip(keep.tolist(), np.asarray(cands.cost, dtype=np.float64)[keep].tolist(), drop,
                np.asarray(cands.se, dtype=np.float64)[keep].tolist())]


def cached_chain_entries(kind: RouterKind) -> list[PoolEntry]:
    """``chain_entries`` of a kind that simulates chains (``prepared()`` holds its candidates),
    built once per zoo: they do not depend on the level (about 1.5 million entries where
    committee cascades of three stages are simulated; building them was most of a level's
    time). The list is shared: callers copy it before adding to it."""
    key = f"entries:{kind.name}"
    if key not in kind.ctx.shared:
        kind.ctx.shared[key] = chain_entries(kind.name, kind.prepared(), kind.ctx.ref_accuracy,
                                             kind.ctx.val.n_samples)
    return kind.ctx.shared[key]


class CascadeKind(RouterKind):
    """Run models cheap to dear; stop at the first whose top softmax probability clears its
    stage's threshold."""

    name = "cascade"
    family = "cascade"
    style = KindStyle("tab:blue", "o", 4.5)
    simplicity = 1
    router_types = (CascadeRouter,)
    description = "confidence cascade (max-softmax thresholds per stage)"

    def prepare(self) -> CascadeCandidates:
        s = self.ctx.settings
        cands = cascade_candidates(self.ctx.val, self.cvec, max_stages=s.max_stages, grid=s.grid,
                                   reference=self.ctx.ref)
        self.ctx.record["cascade_candidates"] = int(len(cands.accuracy))
        return cands

    def _set(self, fit: CascadeFit, cand: Candidate) -> "CascadeKind":
        self.fit_ = fit
        self.router_ = CascadeRouter.from_fit(fit)
        self.candidate_ = cand
        self.details_ = {"val_stage_reach": fit.stage_reach, "val_se": fit.val_se, "z": fit.z}
        return self

    def fit(self, sacrifice: float, target: float) -> "CascadeKind":
        fit = select_cascade(self.prepared(), target, z=self.ctx.settings.margin_z)
        return self._set(fit, candidate(self, fit.val_accuracy, fit.val_cost, True))

    def path_entries(self, sacrifice: float) -> list[PoolEntry]:
        return cached_chain_entries(self)

    def correct_on_certify(self, entry: PoolEntry) -> np.ndarray:
        return self.correct_on(entry, self.ctx.certify)

    def correct_on(self, entry: PoolEntry, table: PredictionTable) -> np.ndarray:
        """(n,) whether candidate ``entry`` answers each image of ``table`` right."""
        stages, th = chain_at(self.prepared(), entry.key)
        ch = simulate_cascade(table_precision(table.confidence), stages, th)
        return table.correct[np.arange(table.n_samples), ch]

    def fit_entry(self, entry: PoolEntry | None, sacrifice: float,
                  cand: Candidate) -> "CascadeKind":
        cc = self.prepared()
        key = entry.key if entry is not None else single_stage_index(cc, self.ctx.ref)
        return self._set(cascade_fit_at(cc, key), cand)

    def simulate(self, test: TestView) -> np.ndarray:
        return simulate_cascade(table_precision(test.table.confidence), self.fit_.stages,
                                self.fit_.thresholds)

    def stages(self) -> Sequence[int]:
        return self.fit_.stages

    def timing_key(self) -> tuple:
        return (self.name, tuple(self.fit_.stages), tuple(self.fit_.thresholds))

    def run(self, images: torch.Tensor, models: Sequence[torch.nn.Module], infos: Sequence[Any],
            batch_size: int) -> ExecResult:
        return execute_cascade(self.fit_.stages, self.fit_.thresholds, images, models, infos,
                               batch_size)

    @classmethod
    def state(cls, router: Router) -> dict[str, Any]:
        return {"stages": router.stages, "thresholds": router.thresholds}

    @classmethod
    def from_state(cls, state: dict[str, Any], model_names: list[str],
                   info: DatasetInfo | None) -> Router:
        return CascadeRouter(model_names, state["stages"], state["thresholds"])

    @classmethod
    def needed_models(cls, router: Router, n_models: int) -> set[int]:
        return set(router.stages)

    @classmethod
    def why(cls, router: Router, scores: np.ndarray, score_names: Sequence[str]
            ) -> list[dict[str, Any]]:
        """Each stage's confidence against its threshold, and whether it stopped there."""
        rows = []
        for j, (stage, conf) in enumerate(zip(router.stages, scores)):
            last = j == len(router.stages) - 1
            reached = not math.isnan(float(conf))
            th = router.thresholds[j]
            rows.append({"stage": str(j + 1), "model": router.model_names[stage],
                         "confidence": float(conf) if reached else "not run",
                         "threshold": "last stage" if last else float(th),
                         "stops": ("yes" if reached and (last or conf >= th) else
                                   "no" if reached else "")})
        return rows
