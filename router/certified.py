"""Certified fitting and selection of one zoo (``evaluate-routers --selection certified``).

Val is split once (seeded) into a *select* part and a *certify* part
(``router.certify.split_calibration``; ``certify_context``). Everything chosen from data is
chosen on the select part alone: each router kind's per-zoo work (the dispatchers' networks,
the learned cascade's heads, every simulated cascade) and, at each level, the one path of
candidates from all kinds together (``pareto_path``: the frontier of expected cost against
the bound the certify part is predicted to give, most expensive first). The certify part then
tests the path in order at the full risk ``delta`` and stops at the first failure
(``fixed_sequence``), so every candidate before the stop is certified at once with
family-wise error <= delta, whichever kind it comes from. The deployed answer is the cheapest
certified one; each kind's row shows its own cheapest certified candidate (or the reference
alone, where none of its candidates was certified). A path left empty gets one last try
(``last_try``). The cheapest adequate single model, the baseline, is certified the same way
on a path of single models only.

Numpy; the kinds bring their own (a dispatcher scores the certify part's images with torch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from common.tables import PredictionTable
from router.base import paired_se
from router.certify import Certificate, PoolEntry, certificate, fixed_sequence, loss_gain, \
    pareto_path, path_z, predicted_bounds, smallest_certifiable, split_calibration
from router.deferral import rows_of
from router.kind import KindContext, KindSettings, RouterKind
from router.selection import Candidate
from zoo.data import DatasetInfo

REFERENCE_REASON = "the reference itself (nothing cheaper was certified): drop 0 exactly"


def certify_context(zoo: str, val: PredictionTable, cvec: np.ndarray, ref: int,
                    settings: KindSettings, *, select_share: float,
                    images: torch.Tensor | None = None, info: DatasetInfo | None = None,
                    head_ms: float = 0.0, stage_ms: float = 0.0,
                    log: Callable[[str], None] = print,
                    record: dict[str, Any] | None = None) -> KindContext:
    """The kinds' context under certified selection: ``val`` split (seeded by
    ``settings.seed``) into the select part the kinds choose on (``ctx.val``, ``ctx.images``)
    and the certify part (``ctx.certify``, ``ctx.certify_images``)."""
    sel, cer = split_calibration(val.n_samples, select_share, settings.seed)
    pick = (lambda idx: None if images is None else images[torch.from_numpy(idx)])
    return KindContext(zoo, rows_of(val, sel), np.asarray(cvec, dtype=np.float64), ref,
                       settings, images=pick(sel), info=info, certify=rows_of(val, cer),
                       certify_images=pick(cer), head_ms=head_ms, stage_ms=stage_ms, log=log,
                       record=record if record is not None else {})


@dataclass
class CertifiedLevel:
    """What the certified selection fitted and decided at one level."""

    cheapest_single: int
    kinds: dict[str, RouterKind]               # each kind fitted at its cheapest certified
    candidates: dict[str, Candidate]
    certificates: dict[str, Certificate]
    selected: str
    record: dict[str, Any]


def certify_level(ctx: KindContext, s: float, delta: float,
                  kinds: Sequence[type[RouterKind]], max_path: int = 24) -> CertifiedLevel:
    """Build one path from the single models' and every kind's candidates on the select part,
    certify it on the certify part (see the module doc). Kinds with ``path_group`` 0 (those
    that only set thresholds on table simulations) come first, then the kinds that fit
    models on the select part, whose estimates are the most optimistic. The dispatchers' come
    from the small held-out part that also stopped their training and chose their thresholds;
    on the standard run they looked 1.8 points better than the reference and were 0.9 worse
    on the certify part, so ahead of the others they would stop the whole path at its first
    point. The learned cascade's heads are fitted on the select part too: on the
    standard-committee run at s = 0 its candidate (-0.72 points on the select part, -0.21 on
    the certify part) stood between the float committee cascade and its int8 copy (the same
    loss and gain counts at a sixth of the cost) and stopped the path before the copy was
    tested."""
    ref, val_s, val_c, cvec = ctx.ref, ctx.val, ctx.certify, ctx.cvec
    names = ctx.names
    ref_c = val_c.correct[:, ref]
    fitted = {k.name: k(ctx) for k in kinds}
    # the single models come first, in model order: pool[ref] is the reference itself
    pool: list[PoolEntry] = single_entries(val_s.correct, ref, cvec)
    pool_group = [np.zeros(len(pool), dtype=np.int64)]        # each entry's path group
    for k in fitted.values():
        entries = k.path_entries(s)
        pool += entries
        pool_group.append(np.full(len(entries), k.path_group, dtype=np.int64))
    group_of = np.concatenate(pool_group)
    z = path_z(delta)
    predicted = predicted_bounds(pool, val_c.n_samples, z, ctx.settings.estimate_weight)
    cost = np.fromiter((e.cost for e in pool), dtype=np.float64, count=len(pool))
    parts = []
    for g in np.unique(group_of):
        idx = np.flatnonzero(group_of == g)
        if idx.size:
            parts.append(idx[pareto_path(cost[idx], predicted[idx], s, max_len=max_path,
                                         reference_cost=float(cvec[ref]))])
    path = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if path.size == 0:
        drop = np.fromiter((e.drop for e in pool), dtype=np.float64, count=len(pool))
        path = last_try(cost, drop, predicted, ref, s, float(cvec[ref]))
    correct_c = [val_c.correct[:, int(pool[i].key)] if pool[i].family == "single"
                 else fitted[pool[i].family].correct_on_certify(pool[i]) for i in path]
    counts = [loss_gain(c, ref_c) for c in correct_c]
    k = fixed_sequence(counts, val_c.n_samples, s, delta)
    stop_reason = ("" if k == len(path) else
                   f"path stopped at its {k + 1}th of {len(path)} candidates")
    best_of: dict[str, int] = {}             # per family: its cheapest certified candidate
    for j in range(k):
        fam = pool[path[j]].family
        if fam not in best_of or pool[path[j]].cost < pool[path[best_of[fam]]].cost:
            best_of[fam] = j
    # the reference itself: its drop is 0 exactly, so it meets any level >= 0 with no risk
    ref_cert = reference_certificate(s, delta, val_c.n_samples)
    certs: dict[str, Certificate] = {}
    cands: dict[str, Candidate] = {}
    for name, kind in fitted.items():
        if name in best_of:
            j = best_of[name]
            e, c = pool[path[j]], correct_c[j]
            cert = certificate(c, ref_c, s, delta, True,
                               f"certified at position {j + 1} of the path")
            cost, acc = e.cost, float(c.mean())
        else:
            e, cert, cost, acc = None, ref_cert, float(cvec[ref]), float(ref_c.mean())
        certs[name] = cert
        cands[name] = Candidate(name, acc, cost, cert.certified, kind.simplicity)
        kind.fit_entry(e, s, cands[name])
    # the baseline: single models only, on their own path
    cs, sk = certify_singles(val_s.correct, val_c.correct, ref, cvec, s, delta, max_path)
    certs["cheapest-single"] = (certificate(val_c.correct[:, cs], ref_c, s, delta, True,
                                            "certified on the single-model path")
                                if sk else ref_cert)
    cands["cheapest-single"] = Candidate("cheapest-single", float(val_c.correct[:, cs].mean()),
                                         float(cvec[cs]), certs["cheapest-single"].certified)
    # the deployed answer: the cheapest certified candidate of the whole path (the path is
    # cost-ordered within each of its parts, not across them)
    if k:
        j = min(range(k), key=lambda i: (pool[path[i]].cost, i))
        best = pool[path[j]]
        selected = best.family
        if best.family == "single":
            selected = f"single:{names[int(best.key)]}"
            certs[selected] = certificate(correct_c[j], ref_c, s, delta, True,
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
    return CertifiedLevel(cs, fitted, cands, certs, selected, record)


def last_try(cost: np.ndarray, drop: np.ndarray, predicted: np.ndarray, reference: int,
             s: float, reference_cost: float) -> np.ndarray:
    """The path when no candidate's predicted bound meets level ``s``: the one candidate
    predicted to come closest (lowest predicted bound, then the cheaper), tested alone. An
    empty path certifies nothing for sure; one test at the full ``delta`` keeps the
    family-wise error at ``delta`` (the choice uses the select part only). At a level >= 0
    it must be cheaper than the reference, which answers there for free; the reference's own
    entry (index ``reference``) is never the try (its drop is 0 exactly), nor is a candidate
    whose estimate on the select part does not itself meet the level. ``cost``, ``drop``
    and ``predicted`` are the pool's, one value per candidate."""
    ok = np.asarray(drop) <= s + 1e-12
    if s >= 0:
        ok &= np.asarray(cost) < reference_cost - 1e-12
    ok[reference] = False
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    best = idx[np.lexsort((idx, np.asarray(cost)[idx], np.asarray(predicted)[idx]))[0]]
    return np.asarray([best], dtype=np.int64)


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
    predicted = predicted_bounds(single_entries(correct_s, ref, cvec), len(correct_c), z)
    path = pareto_path(np.asarray(cvec, float), predicted, s, max_len=max_path,
                       reference_cost=float(cvec[ref]))
    counts = [loss_gain(correct_c[:, m], correct_c[:, ref]) for m in path]
    k = fixed_sequence(counts, len(correct_c), s, delta)
    return (int(path[k - 1]) if k else int(ref)), k


def describe_uncertified(level: CertifiedLevel, sacrifice: float = 0.0) -> str:
    """A line for the log when no answer but the reference was certified at ``sacrifice``."""
    what = ("nothing cheaper than the reference could be certified" if sacrifice >= 0 else
            f"no answer could be certified as at least {-100 * sacrifice:g} points more "
            "accurate than the reference")
    return (f"{what}; the reference answers (with {level.record['certify_samples']} "
            f"certification images the smallest level any answer could be certified at is "
            f"{100 * level.record['smallest_certifiable']:.2f} points)")
