"""evaluate-routers, part 1: fit every router of a zoo at every level from validation only.

``fit_zoo`` receives the validation table and images and nothing else, so no test figure can
reach a fit or a selection: oracle policies, every router kind of ``router.kinds`` and the
cheapest adequate single model at each sacrifice level, then the one deployable answer
selected on val (``router.selection``; certified: ``router.certified``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from common.tables import PredictionTable
from oracle.policy import fit_policy, reference_index
from router.certified import certify_context, certify_level, describe_uncertified
from router.eval_config import EvalConfig
from router.kind import KindContext, KindSettings, RouterKind
from router.kinds import ROUTER_KINDS
from router.selection import Candidate, cheapest_single, select_deployable
from zoo.data import DatasetInfo


@dataclass
class LevelFit:
    """Everything fitted at one sacrifice level over one zoo, from validation only."""

    sacrifice: float
    target: float                              # reference val accuracy - sacrifice
    policies: dict[str, Any]                   # kind -> oracle.policy.Policy
    cheapest_single: int
    kinds: dict[str, RouterKind]               # router kind name -> the kind fitted at s
    candidates: dict[str, Candidate]
    selected: str
    certificates: dict[str, Any] = field(default_factory=dict)  # method -> certify.Certificate
    record: dict[str, Any] = field(default_factory=dict)        # the certified path, for fits.json


@dataclass
class ZooFit:
    """The routers of one zoo (a subset of the run's models) fitted at every level."""

    zoo: str
    index: np.ndarray                          # (K,) positions of its models in the run's tables
    names: list[str]
    cvec: np.ndarray                           # (K,) ms per image the fits minimise
    ref: int                                   # reference (most accurate on val), zoo index
    ref_val_acc: float
    context: KindContext                       # what the kinds shared (their per-zoo work)
    levels: list[LevelFit]
    record: dict[str, Any]                     # what goes into fits.json


def kind_settings(cfg: EvalConfig, max_macs: float, max_ms: float | None) -> KindSettings:
    """The kinds' fit settings from evaluate-routers' configuration."""
    return KindSettings(margin_z=cfg.margin_z, max_stages=cfg.cascade_max_stages,
                        grid=cfg.cascade_grid, learned_folds=cfg.learned_folds,
                        learned_fit_share=cfg.learned_fit_share, seed=cfg.seed,
                        label_policy=cfg.label_policy, dispatcher=cfg.dispatcher,
                        dispatcher_max_macs=max_macs, dispatcher_max_ms=max_ms,
                        delta=cfg.delta)


def fit_zoo(zoo: str, index: np.ndarray, val: PredictionTable, val_images: torch.Tensor,
            info: DatasetInfo, cvec: np.ndarray, macs: np.ndarray, cfg: EvalConfig,
            log: Callable[[str], None] = print,
            overhead: dict[str, float] | None = None,
            kinds: Sequence[type[RouterKind]] | None = None,
            dispatcher_archs: dict[str, dict[str, Any]] | None = None) -> ZooFit:
    """Fit oracle policies, every router kind (``kinds``, default all of ``ROUTER_KINDS``) and
    the cheapest adequate single model at every level, and select the deployed answer per
    level. Sees the val split only.

    ``cvec``: each model's ms per image. ``overhead`` (``stage_ms``, ``head_ms``): the routing
    work a stage adds outside the model, charged to every stage of every kind (a learned
    stage also pays its head), so expected costs include the routers' own time.
    ``cfg.selection``: "estimate" (the 1-SE rule on all of val) or "certified"
    (``router.certified``: chosen on one part of val, certified at risk ``cfg.delta`` on the
    other). ``dispatcher_archs`` (mode -> {"arch", "ms_per_image"}) pins the dispatchers'
    networks and their measured time (``--costs-from``) instead of searching the widest within
    the caps and timing it."""
    kinds = list(ROUTER_KINDS.values()) if kinds is None else list(kinds)
    names = list(val.model_names)
    ref = reference_index(val, cvec)
    overhead = overhead or {}
    stage_ms = float(overhead.get("stage_ms", 0.0))
    head_ms = float(overhead.get("head_ms", 0.0))
    cvec = np.asarray(cvec, dtype=np.float64) + stage_ms
    ref_val_acc = float(val.correct[:, ref].mean())
    budget_macs = float(macs.min()) / 4.0
    max_ms = (None if cfg.dispatcher_time_share is None      # of the fastest model alone
              else cfg.dispatcher_time_share * (float(cvec.min()) - stage_ms))
    settings = kind_settings(cfg, budget_macs, max_ms)
    settings.dispatcher_archs = dispatcher_archs
    record: dict[str, Any] = {"reference": names[ref], "models": names,
                              "dispatcher_max_macs": budget_macs,
                              "dispatcher_max_ms_per_image": max_ms,
                              "selection": cfg.selection, "overhead_ms": overhead,
                              "kinds": [k.name for k in kinds]}
    if cfg.selection == "certified":
        ctx = certify_context(zoo, val, cvec, ref, settings, select_share=cfg.select_share,
                              images=val_images, info=info, head_ms=head_ms,
                              stage_ms=stage_ms, log=log, record=record)
        record.update(delta=cfg.delta, select_share=cfg.select_share,
                      select_samples=ctx.val.n_samples, certify_samples=ctx.certify.n_samples)
        log(f"  [{zoo}] certified selection at risk delta={cfg.delta:g}: {ctx.val.n_samples} "
            f"val images choose, {ctx.certify.n_samples} certify")
    else:
        ctx = KindContext(zoo, val, cvec, ref, settings, images=val_images, info=info,
                          head_ms=head_ms, stage_ms=stage_ms, log=log, record=record)
    for k in kinds:                  # each kind's per-zoo work, in the table's order
        k(ctx).prepared()
    levels = [(_certified_level if cfg.selection == "certified" else _estimate_level)(
        ctx, val, s, cfg, kinds) for s in cfg.sacrifices]
    record["selected"] = {f"{lv.sacrifice:g}": lv.selected for lv in levels}
    record["cheapest_single"] = {f"{lv.sacrifice:g}": names[lv.cheapest_single] for lv in levels}
    if cfg.selection == "certified":
        record["certified_paths"] = {f"{lv.sacrifice:g}": lv.record for lv in levels}
    return ZooFit(zoo, np.asarray(index, dtype=np.int64), names, np.asarray(cvec), ref,
                  ref_val_acc, ctx, levels, record)


def _policies(val: PredictionTable, cvec: np.ndarray, s: float, cfg: EvalConfig
              ) -> dict[str, Any]:
    """The oracle policies at level ``s`` on all of val (bounds; a negative level shows s=0's)."""
    return {kind: fit_policy(kind, val, cvec, max(s, 0.0)) for kind in _policy_kinds(cfg)}


def _policy_kinds(cfg: EvalConfig) -> list[str]:
    """The oracle policies every level fits: the bounds asked for and the label dispatcher's."""
    return list(dict.fromkeys(list(cfg.oracle_kinds) + [cfg.label_policy]))


def _estimate_level(ctx: KindContext, val: PredictionTable, s: float, cfg: EvalConfig,
                    kinds: Sequence[type[RouterKind]]) -> LevelFit:
    """One level under the estimate rule: every kind's cheapest setting whose val accuracy
    minus the margin meets the target, then the cheapest of them."""
    names, cvec, ref = ctx.names, ctx.cvec, ctx.ref
    target = ctx.ref_accuracy - s
    # the kinds choose on all of val here: the label dispatcher reuses these policies
    policies = {kind: ctx.policy(kind, s) for kind in _policy_kinds(cfg)}
    cs, _ = cheapest_single(val.correct, cvec, ref, target, cfg.margin_z)
    cand = {"cheapest-single": Candidate("cheapest-single", float(val.correct[:, cs].mean()),
                                         float(cvec[cs]), True)}
    fitted = {k.name: k(ctx).fit(s, target) for k in kinds}
    cand.update({name: k.candidate_ for name, k in fitted.items()})
    chosen = select_deployable(list(cand.values()))
    ctx.log(f"  [{ctx.zoo}] s={s:g}: cheapest adequate single {names[cs]} ({cvec[cs]:.4f} "
            f"ms/image); selected on val: {chosen.method} ({chosen.fit_ms_per_image:.4f} "
            f"ms/image expected)")
    return LevelFit(s, target, policies, cs, fitted, cand, chosen.method)


def _certified_level(ctx: KindContext, val: PredictionTable, s: float, cfg: EvalConfig,
                     kinds: Sequence[type[RouterKind]]) -> LevelFit:
    """One level under certified selection (``router.certified.certify_level``)."""
    policies = _policies(val, ctx.cvec, s, cfg)
    cl = certify_level(ctx, s, cfg.delta, kinds)
    cert = cl.certificates[cl.selected]
    note = cert.statement() if cl.record["certified"] else describe_uncertified(cl, s)
    ctx.log(f"  [{ctx.zoo}] s={s:g}: certified {cl.record['certified']} of "
            f"{len(cl.record['path'])} path candidates; cheapest certified single "
            f"{ctx.names[cl.cheapest_single]}; selected {cl.selected}: {note}")
    return LevelFit(s, float(val.correct[:, ctx.ref].mean()) - s, policies, cl.cheapest_single,
                    cl.kinds, cl.candidates, cl.selected, certificates=cl.certificates,
                    record=cl.record)
