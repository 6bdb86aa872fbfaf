"""Certified fitting and selection of one zoo (``evaluate-routers --selection certified``).

Val is split once (seeded) into a *select* part and a *certify* part
(``router.certify.split_calibration``). Everything chosen from data is chosen on the select
part alone: the dispatchers' networks and settings, the learned cascade's heads (cross-fitted
there, then refitted on the whole select part: the deployed heads are the certified ones),
every simulated cascade, and at each level the one path of candidates from all families
together (``pareto_path``: the frontier of expected cost against the bound the certify part
is predicted to give, most expensive first). The
certify part then tests the path in order at the full risk ``delta`` and stops at the first
failure (``fixed_sequence``), so every candidate before the stop is certified at once with
family-wise error <= delta, whichever family it comes from. The deployed answer is the
cheapest certified one; each family's row shows its own cheapest certified candidate (or the
reference alone, where none of its candidates was certified). The cheapest adequate single
model, the baseline, is certified the same way on a path of single models only.

Numpy, plus torch for the dispatchers' scores on the certify part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from common.tables import PredictionTable
from router.base import paired_se, table_precision
from oracle.policy import fit_policy
from router.cascade import CascadeCandidates, CascadeFit, cascade_candidates, cascade_fit_at, \
    simulate_cascade, single_stage_index
from router.certify import Certificate, certificate, fixed_sequence, loss_gain, pareto_path, \
    smallest_certifiable, split_calibration
from router.deferral import LearnedCandidates, LearnedCascadeFit, LearnedCascadeRouter, \
    learned_candidates, rows_of
from router.dispatcher import Dispatcher, DispatcherFit, dispatcher_scores, threshold_candidates
from router.selection import Candidate
from zoo.data import DatasetInfo

REFERENCE_REASON = "the reference itself (nothing cheaper was certified): drop 0 exactly"
FAMILY_OF = {"single": "cheapest-single", "cascade": "cascade", "learned": "learned-cascade",
             "dispatcher-sample": "dispatcher-sample", "dispatcher-label": "dispatcher-label"}


@dataclass
class CertifySplit:
    """The two parts of val and what every level shares."""

    select: np.ndarray               # positions in val
    certify: np.ndarray
    val_s: PredictionTable
    val_c: PredictionTable
    ref: int
    ref_c: np.ndarray                # (n_c,) reference correct on the certify part
    ref_acc_s: float
    cascades: CascadeCandidates      # simulated on the select part
    learned: LearnedCandidates | None  # heads cross-fitted and refitted on the select part
    disp_scores_c: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PoolEntry:
    """One candidate answer at one level, as the select part estimates it."""

    family: str                      # key of FAMILY_OF
    key: Any                         # family-specific: model, candidate index, tau, router
    cost: float                      # expected ms per image, the router's own time included
    drop: float                      # estimated drop against the reference on the select part
    se: float = 0.0                  # paired standard error of that estimate ...
    n: int = 1                       # ... from this many images

    def predicted_bound(self, n_certify: int, z: float) -> float:
        """The drop bound the certify part is expected to give: the estimate plus ``z``
        standard errors for the certify part's own noise and ``z x ESTIMATE_WEIGHT`` for the
        estimate's (it was read off a few images and among many candidates). The per-image
        variance is floored at two disagreements' worth, so an answer that happened to agree
        with the reference on every select image does not look certain (low for answers that
        rarely disagree)."""
        var = max(self.se ** 2 * self.n, 2.0 / max(1, self.n))
        return self.drop + z * np.sqrt(var) * (1.0 / np.sqrt(max(1, n_certify))
                                               + ESTIMATE_WEIGHT / np.sqrt(max(1, self.n)))


def prepare_split(val: PredictionTable, cvec: np.ndarray, learned_cvec: np.ndarray, ref: int,
                  *, select_share: float, seed: int, max_stages: int, grid: int,
                  learned_folds: int, learned: bool = True) -> CertifySplit:
    """Split val and simulate every cascade and (``learned``) learned cascade on the select
    part."""
    sel, cer = split_calibration(val.n_samples, select_share, seed)
    val_s, val_c = rows_of(val, sel), rows_of(val, cer)
    cands = cascade_candidates(val_s, cvec, max_stages=max_stages, grid=grid, reference=ref)
    folds = learned_folds if learned_folds == 0 or val_s.n_samples >= 2 * learned_folds else 0
    lc = (learned_candidates(val_s, learned_cvec, reference=ref, max_stages=max_stages,
                             grid=grid, folds=folds, seed=seed) if learned else None)
    return CertifySplit(sel, cer, val_s, val_c, ref, val_c.correct[:, ref],
                        float(val_s.correct[:, ref].mean()), cands, lc)


def dispatcher_setup(split: CertifySplit, mode: str, fit: DispatcherFit, val_images: torch.Tensor,
                     info: DatasetInfo) -> None:
    """Scores of a dispatcher (trained on the select part) on the certify part's images."""
    x = val_images[torch.from_numpy(split.certify)]
    with torch.inference_mode():
        split.disp_scores_c[mode] = dispatcher_scores(fit.net, x, info, mode).numpy()


def _learned_fit(lc: LearnedCandidates, i: int, target: float) -> LearnedCascadeFit:
    fit = cascade_fit_at(lc.cands, i)
    return LearnedCascadeFit(fit, [lc.heads[m] for m in fit.stages[:-1]], target,
                             len(lc.fit_index), len(lc.threshold_index))


@dataclass
class CertifiedLevel:
    """What the certified selection fitted and decided at one level."""

    cheapest_single: int
    cascade: CascadeFit
    learned: LearnedCascadeFit | None
    dispatcher_sample: Dispatcher | None
    dispatcher_label: Dispatcher | None
    label_skipped: bool
    candidates: dict[str, Candidate]
    certificates: dict[str, Certificate]
    selected: str
    record: dict[str, Any]


def certify_level(split: CertifySplit, s: float, delta: float, cvec: np.ndarray,
                  learned_cvec: np.ndarray, names: list[str],
                  disp: dict[str, tuple[DispatcherFit, float]] | None = None,
                  label_policy: str = "budget", max_path: int = 24,
                  families: tuple[str, ...] | None = None) -> CertifiedLevel:
    """Build one path from every family's candidates on the select part, certify it on the
    certify part (see the module doc). ``disp``: mode -> (fit on the select part, network ms
    per image), or None to leave the dispatchers out. ``families`` (keys of ``FAMILY_OF``)
    limits the path to those (the library fits one kind at a time); default: all."""
    ref, val_s, val_c = split.ref, split.val_s, split.val_c
    pool: list[PoolEntry] = []
    n_s = val_s.n_samples
    pool += single_entries(val_s.correct, ref, cvec)
    cc = split.cascades
    for i in range(len(cc.accuracy)):
        if len(cc.chains[int(cc.chain_of[i])]) > 1:
            pool.append(PoolEntry("cascade", i, float(cc.cost[i]),
                                  split.ref_acc_s - float(cc.accuracy[i]), float(cc.se[i]), n_s))
    lc = split.learned
    for i in range(0 if lc is None else len(lc.cands.accuracy)):
        if len(lc.cands.chains[int(lc.cands.chain_of[i])]) > 1:
            pool.append(PoolEntry("learned", i, float(lc.cands.cost[i]),
                                  lc.reference_accuracy - float(lc.cands.accuracy[i]),
                                  float(lc.cands.se[i]), len(lc.threshold_index)))
    skipped = False
    for mode, (fit, net_ms) in (disp or {}).items():
        hold = fit.holdout_index
        hold_correct = val_s.correct[hold]
        ref_hold = float(hold_correct[:, ref].mean())
        if mode == "sample":
            taus, right, cost = threshold_candidates(fit.holdout_scores, hold_correct, cvec, ref,
                                                     router_cost=net_ms)
            hr = hold_correct[:, ref]
            ses = paired_se((right & ~hr).sum(1), (~right & hr).sum(1), len(hold))
            for t, r, c, se in zip(taus, right, cost, ses):
                if 0.0 < t <= 1.0:          # tau 0 / above 1 are single models, already pooled
                    d = Dispatcher.from_fit(fit, cvec, threshold=float(t), fallback=ref)
                    pool.append(PoolEntry("dispatcher-sample", d, float(c),
                                          ref_hold - float(r.mean()), float(se), len(hold)))
        else:
            pol = fit_policy(label_policy, val_s, cvec, max(s, 0.0))
            d = Dispatcher.from_fit(fit, cvec, policy=pol, fallback=ref)
            ch = d.choose(fit.holdout_scores)
            share = np.bincount(ch, minlength=len(cvec)) / max(1, len(ch))
            cost = float(share @ cvec) + (0.0 if d.constant_choice is not None else net_ms)
            if d.constant_choice is None:
                r = hold_correct[np.arange(len(hold)), ch]
                hr = hold_correct[:, ref]
                se = float(paired_se(int((r & ~hr).sum()), int((~r & hr).sum()), len(hold)))
                pool.append(PoolEntry("dispatcher-label", d, cost, ref_hold - float(r.mean()),
                                      se, len(hold)))
    if families is not None:
        pool = [e for e in pool if e.family in families]
    z = path_z(delta)
    predicted = np.array([e.predicted_bound(val_c.n_samples, z) for e in pool])
    # one fixed sequence: the table-simulated families first, then the dispatchers. A
    # dispatcher's estimates come from its small held-out part, which also stopped its
    # training and chose its thresholds: on the standard run they looked 1.8 points better
    # than the reference and were 0.9 worse on the certify part, so ahead of the others they
    # would stop the whole path at its first point
    parts = []
    for group in ([i for i, e in enumerate(pool) if not e.family.startswith("dispatcher")],
                  [i for i, e in enumerate(pool) if e.family.startswith("dispatcher")]):
        idx = np.asarray(group, dtype=np.int64)
        if idx.size:
            parts.append(idx[pareto_path(np.array([pool[i].cost for i in idx]), predicted[idx],
                                         s, max_len=max_path, reference_cost=float(cvec[ref]))])
    path = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    correct_c = [_correct_on_certify(split, pool[i]) for i in path]
    counts = [loss_gain(c, split.ref_c) for c in correct_c]
    k = fixed_sequence(counts, val_c.n_samples, s, delta)
    stop_reason = ("" if k == len(path) else
                   f"path stopped at its {k + 1}th of {len(path)} candidates")
    # per family: its cheapest certified candidate
    best_of: dict[str, int] = {}
    for j in range(k):
        fam = pool[path[j]].family
        if fam not in best_of or pool[path[j]].cost < pool[path[best_of[fam]]].cost:
            best_of[fam] = j
    certs: dict[str, Certificate] = {}
    cands: dict[str, Candidate] = {}
    # the reference itself: its drop is 0 exactly, so it meets any level >= 0 with no risk
    ref_cert = reference_certificate(s, delta, val_c.n_samples)

    def family_result(fam: str) -> tuple[Any, Certificate, float, float]:
        """(key, certificate, cost, certify-part accuracy) of a family's deployed answer."""
        if fam in best_of:
            j = best_of[fam]
            e = pool[path[j]]
            c = correct_c[j]
            return e.key, certificate(c, split.ref_c, s, delta, True,
                                      f"certified at position {j + 1} of the path"), \
                e.cost, float(c.mean())
        return None, ref_cert, float(cvec[ref]), float(split.ref_c.mean())

    # the cascade and learned cascade: their cheapest certified candidate, else the reference
    key, cert, cost, acc = family_result("cascade")
    cfit = cascade_fit_at(cc, key if key is not None else single_stage_index(cc, ref))
    certs["cascade"], cands["cascade"] = cert, Candidate("cascade", acc, cost, cert.certified)
    lfit = None
    if lc is not None:
        key, cert, cost, acc = family_result("learned")
        lfit = _learned_fit(lc, key if key is not None else single_stage_index(lc.cands, ref),
                            split.ref_acc_s - s)
        certs["learned-cascade"] = cert
        cands["learned-cascade"] = Candidate("learned-cascade", acc, cost, cert.certified)
    ds = dl = None
    disp = disp or {}
    if "sample" in disp:
        fit, _ = disp["sample"]
        key, cert, cost, acc = family_result("dispatcher-sample")
        ds = key or Dispatcher.from_fit(fit, cvec, threshold=1.01, fallback=ref)
        certs["dispatcher-sample"] = cert
        cands["dispatcher-sample"] = Candidate("dispatcher-sample", acc, cost, cert.certified)
    if "label" in disp:
        fit, _ = disp["label"]
        key, cert, cost, acc = family_result("dispatcher-label")
        if key is None:
            skipped = True
            dl = Dispatcher.to_one_model(fit, cvec, ref)
        else:
            dl = key
        certs["dispatcher-label"] = cert
        cands["dispatcher-label"] = Candidate("dispatcher-label", acc, cost, cert.certified)
    # the baseline: single models only, on their own path
    cs, sk = certify_singles(val_s.correct, val_c.correct, ref, cvec, s, delta, max_path)
    certs["cheapest-single"] = (certificate(val_c.correct[:, cs], split.ref_c, s, delta, True,
                                            "certified on the single-model path")
                                if sk else ref_cert)
    cands["cheapest-single"] = Candidate("cheapest-single", float(val_c.correct[:, cs].mean()),
                                         float(cvec[cs]), certs["cheapest-single"].certified)
    # the deployed answer: the cheapest certified candidate of the whole path (the path is
    # cost-ordered within each of its two parts, not across them)
    if k:
        j = min(range(k), key=lambda i: (pool[path[i]].cost, i))
        best = pool[path[j]]
        selected = FAMILY_OF[best.family]
        if best.family == "single":
            selected = f"single:{names[int(best.key)]}"
            certs[selected] = certificate(correct_c[j], split.ref_c, s, delta, True,
                                          f"certified at position {j + 1} of the path")
    else:
        selected = f"single:{names[ref]}"
        certs[selected] = ref_cert
    record = {"path": [{"family": pool[i].family, "cost": pool[i].cost, "drop_select":
                        pool[i].drop, "loss": lg[0], "gain": lg[1]}
                       for i, lg in zip(path, counts)],
              "certified": k, "stop": stop_reason, "selected": selected,
              "select_samples": int(val_s.n_samples), "certify_samples": int(val_c.n_samples),
              "smallest_certifiable": smallest_certifiable(val_c.n_samples, delta)}
    return CertifiedLevel(cs, cfit, lfit, ds, dl, skipped, cands, certs, selected, record)


# weight of the estimate's own noise in the predicted bound: chosen on resampled val-only
# draws of the standard run (`bench_guarantee --population val`): 1.0 cost 5-7 % of the
# expected speedup at s = 2 %, 0.5 and 0.25 did as well as no guard; 0.5 keeps a guard for
# candidates read off a few hundred images (a dispatcher's held-out part)
ESTIMATE_WEIGHT = 0.5


def path_z(delta: float) -> float:
    """Standard errors (of each noise: the certify part's and the estimate's own) added to a
    select-part estimate to predict the certify part's bound: the one-sided normal quantile
    at ``delta``."""
    return float(stats.norm.ppf(1.0 - delta))


def reference_certificate(s: float, delta: float, n: int) -> Certificate:
    """The reference answering itself: its drop is 0 exactly, so it meets any level >= 0 with
    no risk and no negative level."""
    return Certificate(float(s), float(delta), int(n), 0, 0, s >= 0, 0.0,
                       REFERENCE_REASON if s >= 0 else
                       "nothing more accurate than the reference could be certified: the "
                       "reference answers, uncertified")


def single_entries(correct_s: np.ndarray, ref: int, cvec: np.ndarray) -> list[PoolEntry]:
    """Each single model as a path candidate: its cost, its drop against the reference on the
    select part's correctness ``correct_s`` (n, M) and that drop's paired SE."""
    acc = correct_s.mean(axis=0)
    r = correct_s[:, ref]
    se = paired_se((correct_s & ~r[:, None]).sum(0), (~correct_s & r[:, None]).sum(0),
                   len(correct_s))
    return [PoolEntry("single", m, float(cvec[m]), float(acc[ref] - acc[m]), float(se[m]),
                      len(correct_s)) for m in range(len(acc))]


def certify_singles(correct_s: np.ndarray, correct_c: np.ndarray, ref: int, cvec: np.ndarray,
                    s: float, delta: float, max_path: int = 24) -> tuple[int, int]:
    """The cheapest single model certified at level ``s``: the path of single models (Pareto
    on the select part's (cost, predicted bound)), tested in order on the certify part.
    ``correct_*`` (n, M) booleans. Returns (model, how many were certified); the reference
    where none was."""
    z = path_z(delta)
    predicted = np.array([e.predicted_bound(len(correct_c), z)
                          for e in single_entries(correct_s, ref, cvec)])
    path = pareto_path(np.asarray(cvec, float), predicted, s, max_len=max_path,
                       reference_cost=float(cvec[ref]))
    counts = [loss_gain(correct_c[:, m], correct_c[:, ref]) for m in path]
    k = fixed_sequence(counts, len(correct_c), s, delta)
    return (int(path[k - 1]) if k else int(ref)), k


def _correct_on_certify(split: CertifySplit, e: PoolEntry) -> np.ndarray:
    """(n_c,) whether candidate ``e`` answers each certify-part image right."""
    val_c = split.val_c
    rows = np.arange(val_c.n_samples)
    if e.family == "single":
        return val_c.correct[:, int(e.key)]
    if e.family == "cascade":
        cc = split.cascades
        stages = cc.chains[int(cc.chain_of[e.key])]
        th = [float(t) for t in cc.thresholds[e.key]] + [0.0]
        ch = simulate_cascade(table_precision(val_c.confidence), stages, th)
        return val_c.correct[rows, ch]
    if e.family == "learned":
        fit = _learned_fit(split.learned, int(e.key), 0.0)
        ch = LearnedCascadeRouter.from_fit(fit).simulate(val_c.probs)
        return val_c.correct[rows, ch]
    ch = e.key.choose(split.disp_scores_c[e.family.split("-", 1)[1]])    # a dispatcher
    return val_c.correct[rows, ch]


def describe_uncertified(level: CertifiedLevel) -> str:
    """A line for the log when nothing cheaper than the reference was certified."""
    return (f"nothing cheaper than the reference could be certified; the reference answers "
            f"(with {level.record['certify_samples']} certification images the smallest level any "
            f"answer could be certified at is {100 * level.record['smallest_certifiable']:.2f} "
            f"points)")

