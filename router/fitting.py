"""evaluate-routers, part 1: fit every router of a zoo at every level from validation only.

``fit_zoo`` receives the validation table and images and nothing else, so no test figure can
reach a fit or a selection: oracle policies, both dispatchers, the cascade, the learned
cascade and the cheapest adequate single model at each sacrifice level, then the one
deployable answer selected on val (``router.selection``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from common.tables import PredictionTable
from oracle.policy import fit_policy, reference_index
from router.base import accuracy_lower_bound
from router.cascade import cascade_candidates, select_cascade
from router.certified import certify_level, describe_uncertified, dispatcher_setup, \
    prepare_split
from router.deferral import learned_candidates, select_learned
from router.dispatcher import Dispatcher, DispatcherFit, choose_threshold, \
    dispatcher_ms_per_image, fit_dispatcher
from router.eval_config import EPS, EvalConfig
from router.selection import Candidate, cheapest_single, select_deployable
from zoo.data import DatasetInfo, normalize


# ---- fitting: validation only -------------------------------------------------------------

@dataclass
class LevelFit:
    """Everything fitted at one sacrifice level over one zoo, from validation only."""

    sacrifice: float
    target: float                              # reference val accuracy - sacrifice
    policies: dict[str, Any]                   # kind -> oracle.policy.Policy
    cheapest_single: int
    dispatcher_label: Dispatcher
    label_skipped: bool                        # the network is not cheaper: reference alone
    dispatcher_sample: Dispatcher
    cascade: Any                               # router.cascade.CascadeFit
    candidates: dict[str, Candidate]
    selected: str
    learned_cascade: Any = None                # router.deferral.LearnedCascadeFit
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
    disp: dict[str, DispatcherFit]
    disp_ms: dict[str, float]
    levels: list[LevelFit]
    record: dict[str, Any]                     # what goes into fits.json


def fit_zoo(zoo: str, index: np.ndarray, val: PredictionTable, val_images: torch.Tensor,
            info: DatasetInfo, cvec: np.ndarray, macs: np.ndarray, cfg: EvalConfig,
            log: Callable[[str], None] = print,
            overhead: dict[str, float] | None = None) -> ZooFit:
    """Fit oracle policies, both dispatchers, both cascades and the cheapest adequate single
    model at every level, and select the deployed answer per level. Sees the val split only.

    ``cvec``: each model's ms per image. ``overhead`` (``stage_ms``, ``head_ms``): the routing
    work a stage adds outside the model, charged to every stage of every family (a learned
    stage also pays its head), so expected costs include the routers' own time.
    ``cfg.selection``: "estimate" (the 1-SE rule on all of val) or "certified"
    (``router.certified``: chosen on one part of val, certified at risk ``cfg.delta`` on the
    other)."""
    names = list(val.model_names)
    ref = reference_index(val, cvec)
    overhead = overhead or {}
    stage_ms = float(overhead.get("stage_ms", 0.0))
    cvec = np.asarray(cvec, dtype=np.float64) + stage_ms
    learned_cvec = cvec + float(overhead.get("head_ms", 0.0))
    if cfg.selection == "certified":
        return _fit_zoo_certified(zoo, index, val, val_images, info, cvec, learned_cvec, macs,
                                  cfg, ref, log, stage_ms)
    ref_val_acc = float(val.correct[:, ref].mean())
    budget_macs = float(macs.min()) / 4.0
    max_ms = (None if cfg.dispatcher_time_share is None      # of the fastest model alone
              else cfg.dispatcher_time_share * (float(cvec.min()) - stage_ms))
    record: dict[str, Any] = {"reference": names[ref], "models": names,
                              "dispatcher_max_macs": budget_macs,
                              "dispatcher_max_ms_per_image": max_ms,
                              "selection": cfg.selection, "overhead_ms": overhead}
    disp, disp_ms = fit_dispatchers(zoo, val, val_images, info, budget_macs, max_ms, cfg,
                                    record, log)
    cands = cascade_candidates(val, cvec, max_stages=cfg.cascade_max_stages, grid=cfg.cascade_grid,
                               reference=ref)
    record["cascade_candidates"] = int(len(cands.accuracy))
    t0 = time.perf_counter()
    lcands = learned_candidates(val, learned_cvec, reference=ref, max_stages=cfg.cascade_max_stages,
                                grid=cfg.cascade_grid, folds=cfg.learned_folds,
                                fit_share=cfg.learned_fit_share, seed=cfg.seed)
    record["learned_cascade"] = {
        "folds": lcands.folds,
        "fit_samples": int(len(lcands.fit_index)),
        "threshold_samples": int(len(lcands.threshold_index)),
        "candidates": int(len(lcands.cands.accuracy)),
        "reference_threshold_accuracy": lcands.reference_accuracy,
        "fit_seconds": time.perf_counter() - t0,
        "heads": {n: h.state() for n, h in zip(names, lcands.heads)}}
    levels = []
    for s in cfg.sacrifices:
        target = ref_val_acc - s
        policies = {kind: fit_policy(kind, val, cvec, s)
                    for kind in dict.fromkeys(list(cfg.oracle_kinds) + [cfg.label_policy])}
        cs, cs_bound = cheapest_single(val.correct, cvec, ref, target, cfg.margin_z)
        cand = {"cheapest-single": Candidate("cheapest-single", float(val.correct[:, cs].mean()),
                                             float(cvec[cs]), True)}
        dl, skip, cand["dispatcher-label"] = label_dispatcher_at(
            disp["label"], disp_ms["label"], val, cvec, ref, policies[cfg.label_policy], s,
            cfg.margin_z)
        ds, cand["dispatcher-sample"] = sample_dispatcher_at(
            disp["sample"], disp_ms["sample"], val, cvec, ref, s, cfg.margin_z)
        fit = select_cascade(cands, target, z=cfg.margin_z)
        cand["cascade"] = Candidate("cascade", fit.val_accuracy, fit.val_cost, True)
        # learned cascade: accuracy and expected cost on the part of val its thresholds saw
        lfit = select_learned(lcands, s, z=cfg.margin_z)
        cand["learned-cascade"] = Candidate("learned-cascade", lfit.val_accuracy, lfit.val_cost,
                                            True)
        chosen = select_deployable(list(cand.values()))
        levels.append(LevelFit(s, target, policies, cs, dl, bool(skip), ds, fit, cand,
                               chosen.method, learned_cascade=lfit))
        log(f"  [{zoo}] s={s:g}: cheapest adequate single {names[cs]} ({cvec[cs]:.4f} ms/image); "
            f"selected on val: {chosen.method} ({chosen.fit_ms_per_image:.4f} ms/image expected)")
    record["selected"] = {f"{lv.sacrifice:g}": lv.selected for lv in levels}
    record["cheapest_single"] = {f"{lv.sacrifice:g}": names[lv.cheapest_single] for lv in levels}
    return ZooFit(zoo, np.asarray(index, dtype=np.int64), names, np.asarray(cvec), ref,
                  ref_val_acc, disp, disp_ms, levels, record)


def fit_dispatchers(zoo: str, val: PredictionTable, val_images: torch.Tensor, info: DatasetInfo,
                    budget_macs: float, max_ms: float | None, cfg: EvalConfig,
                    record: dict[str, Any], log: Callable[[str], None]
                    ) -> tuple[dict[str, DispatcherFit], dict[str, float]]:
    """Train both dispatchers on ``val`` (its images aligned), time their networks; each one's
    figures go into ``record``. Returns (mode -> fit, mode -> network ms per image)."""
    disp: dict[str, DispatcherFit] = {}
    disp_ms: dict[str, float] = {}
    time_x = normalize(val_images[:1024], info)
    for mode in ("label", "sample"):
        t0 = time.perf_counter()
        disp[mode] = fit_dispatcher(mode, val_images, val, info, budget_macs, cfg.dispatcher,
                                    max_ms=max_ms)
        h = (min(disp[mode].history, key=lambda e: e["holdout_loss"])
             if disp[mode].history else {})            # the epoch whose state is kept
        d_ms = disp_ms[mode] = dispatcher_ms_per_image(disp[mode].arch, time_x)
        record[f"dispatcher_{mode}"] = {"arch": disp[mode].arch.to_dict(), "macs": disp[mode].macs,
                                        "ms_per_image": d_ms,
                                        "time_cap_met": max_ms is None or d_ms <= max_ms,
                                        "train_seconds": time.perf_counter() - t0,
                                        "holdout": len(disp[mode].holdout_index),
                                        "history": disp[mode].history}
        cap = "" if max_ms is None else f", {d_ms:.4f} ms/image (cap {max_ms:.4f})"
        log(f"  [{zoo}] dispatcher[{mode}]: {disp[mode].macs} MACs/image (cap {budget_macs:.0f} "
            f"= 1/4 of the cheapest model){cap}, width {disp[mode].arch.width}, downsample "
            f"{disp[mode].arch.downsample}, trained in {time.perf_counter() - t0:.1f}s, kept "
            f"epoch {h.get('epoch', 0)} (held-out acc {h.get('holdout_accuracy', float('nan')):.3f})")
    return disp, disp_ms


def _fit_zoo_certified(zoo: str, index: np.ndarray, val: PredictionTable,
                       val_images: torch.Tensor, info: DatasetInfo, cvec: np.ndarray,
                       learned_cvec: np.ndarray, macs: np.ndarray, cfg: EvalConfig, ref: int,
                       log: Callable[[str], None], stage_ms: float = 0.0) -> ZooFit:
    """``fit_zoo`` under certified selection (``router.certified``): every data-fitted setting
    sees the select part of val, the certificates the certify part."""
    names = list(val.model_names)
    ref_val_acc = float(val.correct[:, ref].mean())
    budget_macs = float(macs.min()) / 4.0
    max_ms = (None if cfg.dispatcher_time_share is None      # of the fastest model alone
              else cfg.dispatcher_time_share * (float(cvec.min()) - stage_ms))
    split = prepare_split(val, cvec, learned_cvec, ref, select_share=cfg.select_share,
                          seed=cfg.seed, max_stages=cfg.cascade_max_stages, grid=cfg.cascade_grid,
                          learned_folds=cfg.learned_folds)
    record: dict[str, Any] = {"reference": names[ref], "models": names,
                              "dispatcher_max_macs": budget_macs,
                              "dispatcher_max_ms_per_image": max_ms, "selection": "certified",
                              "overhead_ms": {"learned_extra": float(learned_cvec[0] - cvec[0])},
                              "delta": cfg.delta, "select_share": cfg.select_share,
                              "select_samples": int(len(split.select)),
                              "certify_samples": int(len(split.certify)),
                              "cascade_candidates": int(len(split.cascades.accuracy))}
    sel_images = val_images[torch.from_numpy(split.select)]
    disp, disp_ms = fit_dispatchers(zoo, split.val_s, sel_images, info, budget_macs, max_ms, cfg,
                                    record, log)
    for mode in disp:
        dispatcher_setup(split, mode, disp[mode], val_images, info)
    lc = split.learned
    record["learned_cascade"] = {"folds": lc.folds, "fit_samples": int(len(lc.fit_index)),
                                 "threshold_samples": int(len(lc.threshold_index)),
                                 "candidates": int(len(lc.cands.accuracy)),
                                 "heads": {n: h.state() for n, h in zip(names, lc.heads)}}
    log(f"  [{zoo}] certified selection at risk delta={cfg.delta:g}: {len(split.select)} val "
        f"images choose, {len(split.certify)} certify")
    levels = []
    for s in cfg.sacrifices:
        # oracle policies are bounds at a sacrifice >= 0 (a negative level shows s = 0's)
        policies = {kind: fit_policy(kind, val, cvec, max(s, 0.0))
                    for kind in dict.fromkeys(list(cfg.oracle_kinds) + [cfg.label_policy])}
        cl = certify_level(split, s, cfg.delta, cvec, learned_cvec, names,
                           {m: (disp[m], disp_ms[m]) for m in disp}, cfg.label_policy)
        levels.append(LevelFit(s, ref_val_acc - s, policies, cl.cheapest_single,
                               cl.dispatcher_label, cl.label_skipped, cl.dispatcher_sample,
                               cl.cascade, cl.candidates, cl.selected,
                               learned_cascade=cl.learned, certificates=cl.certificates,
                               record=cl.record))
        cert = cl.certificates[cl.selected]
        note = (cert.statement() if cl.record["certified"] else describe_uncertified(cl))
        log(f"  [{zoo}] s={s:g}: certified {cl.record['certified']} of "
            f"{len(cl.record['path'])} path candidates; cheapest certified single "
            f"{names[cl.cheapest_single]}; selected {cl.selected}: {note}")
    record["selected"] = {f"{lv.sacrifice:g}": lv.selected for lv in levels}
    record["cheapest_single"] = {f"{lv.sacrifice:g}": names[lv.cheapest_single] for lv in levels}
    record["certified_paths"] = {f"{lv.sacrifice:g}": lv.record for lv in levels}
    return ZooFit(zoo, np.asarray(index, dtype=np.int64), names, np.asarray(cvec), ref,
                  ref_val_acc, disp, disp_ms, levels, record)


def _l2m(policy, n_classes: int) -> np.ndarray:
    idx = policy.label_indices()
    return np.array([idx.get(c, policy.reference_index) for c in range(n_classes)], dtype=np.int64)


def _routed_ms(chosen: np.ndarray, cvec: np.ndarray, router: Dispatcher, net_ms: float) -> float:
    """Expected ms per image a dispatcher pays: its models plus its network when it runs it."""
    share = np.bincount(chosen, minlength=len(cvec)) / max(1, len(chosen))
    return float(share @ cvec) + (0.0 if router.constant_choice is not None else net_ms)


def label_dispatcher_at(fit: DispatcherFit, net_ms: float, val: PredictionTable,
                        cvec: np.ndarray, ref: int, policy: Any, sacrifice: float,
                        z: float) -> tuple[Dispatcher, bool, Candidate]:
    """The label-mode dispatcher at one level: its predicted label mapped through ``policy``
    (an oracle policy fitted on val). Where the policy's expected cost on val plus the
    network's own is not below the reference's, it runs the reference alone and skips its
    network (``skipped``). Its candidate is scored on the dispatcher's held-out part of val.
    Returns (dispatcher, skipped, candidate)."""
    dl = Dispatcher.from_fit(fit, cvec, policy=policy, fallback=ref)
    skip = bool(policy.cost(cvec) + net_ms >= cvec[ref] and dl.constant_choice is None)
    if skip:
        dl = Dispatcher.to_one_model(fit, cvec, ref)
    hold = fit.holdout_index
    ch = dl.choose(fit.holdout_scores)
    right = val.correct[hold, ch]
    hold_ref = val.correct[hold, ref]
    bound = float(accuracy_lower_bound(right, hold_ref, z)[0])
    cand = Candidate("dispatcher-label", float(right.mean()), _routed_ms(ch, cvec, dl, net_ms),
                     bound >= float(hold_ref.mean()) - sacrifice - EPS)
    return dl, skip, cand


def sample_dispatcher_at(fit: DispatcherFit, net_ms: float, val: PredictionTable,
                         cvec: np.ndarray, ref: int, sacrifice: float,
                         z: float) -> tuple[Dispatcher, Candidate]:
    """The sample-mode dispatcher at one level: the cheapest model predicted right with chance
    >= tau, tau chosen on the dispatcher's held-out part of val (its target: the reference's
    accuracy there minus ``sacrifice``, with the margin ``z``)."""
    hold_correct = val.correct[fit.holdout_index]
    tau, h_acc, h_cost = choose_threshold(fit.holdout_scores, hold_correct, cvec,
                                          float(hold_correct[:, ref].mean()) - sacrifice,
                                          fallback=ref, z=z, router_cost=net_ms)
    ds = Dispatcher.from_fit(fit, cvec, threshold=tau, fallback=ref)
    return ds, Candidate("dispatcher-sample", h_acc, h_cost, True)
