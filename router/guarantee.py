"""The miss-rate experiment behind the certified budget (``scripts.bench_guarantee``).

A run's val and test tables, pooled, are the population. Each draw takes |val| images from it
with replacement (a fresh labelled val split), runs the whole selection from tables only, and
measures the deployed answer's accuracy drop against the draw's reference on the whole
population (its "true" drop, free of any one test split's noise). A draw *misses* level s when
that drop exceeds s where a promise was made: at s >= 0 always (the reference meets it
itself); at a negative level only where an answer was certified (where none was, the rule says
so and the reference answers uncertified: ``promised`` is the share of draws with a promise).
Two rules run on every draw (``rules`` may keep one):

- ``estimate``: today's rule: the cheapest of the cheapest adequate single model (val accuracy
  minus ``margin_z`` paired SEs >= target), the cascade and (optionally) the learned cascade
  and the committee cascade, all fitted on the whole draw;
- ``certified``: ``router.certified`` at risk ``delta``: fitted and chosen on the select part,
  certified on the certify part, one path across the same families.

Dispatchers are left out (training their networks 2 x draws times is hours on a CPU). The
learned cascade refits its heads on every draw when ``learned`` is on (slow: off by default).
The expected speedup is the reference's expected ms per image over the deployed answer's, both
on the population with the costs the run's evaluate-routers measured.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from common.tables import PredictionTable
from oracle.policy import reference_index
from router.base import RouterError
from router.certified import certify_context, certify_level
from router.certify import ESTIMATE_WEIGHT
from router.deferral import rows_of
from router.kind import KindContext, KindSettings, RouterKind, TestView
from router.kind_cascade import CascadeKind
from router.kind_committee import CommitteeCascadeKind
from router.kind_learned import LearnedCascadeKind
from router.scoring import cascade_cost
from router.selection import Candidate, cheapest_single, select_deployable

COLUMNS = ["zoo", "rule", "sacrifice", "delta", "draws", "misses", "miss_rate", "miss_lo",
           "miss_hi", "mean_drop", "p90_drop", "median_speedup", "mean_speedup", "promised",
           "max_stages", "learned", "committee", "estimate_weight", "committee_grid",
           "n_val", "population"]


@dataclass
class GuaranteeConfig:
    """What ``bench_guarantee`` draws and fits."""

    draws: int = 500
    delta: float = 0.1
    sacrifices: Sequence[float] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
    max_stages: int = 2
    grid: int = 24
    margin_z: float = 1.0
    select_share: float = 0.3
    learned: bool = False
    learned_folds: int = 5
    committee: bool = False          # add the committee cascade (growing committees)
    rules: Sequence[str] = ("estimate", "certified")
    estimate_weight: float | None = None   # certified path (None: ESTIMATE_WEIGHT)
    committee_grid: int | None = None  # the committee cascade's threshold grid (None: grid)
    seed: int = 0
    progress: bool = True


@dataclass
class Deployed:
    """An answer chosen on one draw, as what it decides on the population."""

    rule: str
    family: str
    chosen: np.ndarray               # (P,) the model answering each population image
    cost: float                      # expected ms per image on the population
    promised: bool = True            # False: a negative level where nothing was certified
    preds: np.ndarray | None = None  # (P,) its answers where not those of ``chosen`` (committees)


def pool_tables(val: PredictionTable, test: PredictionTable) -> PredictionTable:
    """val and test as one population table (same models, in the same order)."""
    if val.model_names != test.model_names:
        raise RouterError("val and test tables hold different models; re-run profile-zoo")
    return PredictionTable(val.model_names, np.concatenate([val.labels, test.labels]),
                           np.concatenate([val.preds, test.preds]),
                           np.concatenate([val.probs, test.probs]),
                           np.arange(val.n_samples + test.n_samples), "pool")


def _kinds(cfg: GuaranteeConfig) -> list[type[RouterKind]]:
    return [CascadeKind] + ([LearnedCascadeKind] if cfg.learned else []) + \
        ([CommitteeCascadeKind] if cfg.committee else [])


def _context(draw: PredictionTable, cvec: np.ndarray, learned_cvec: np.ndarray, ref: int,
             cfg: GuaranteeConfig, seed: int) -> KindContext:
    settings = KindSettings(margin_z=cfg.margin_z, max_stages=cfg.max_stages, grid=cfg.grid,
                            learned_folds=cfg.learned_folds, seed=seed, delta=cfg.delta,
                            estimate_weight=cfg.estimate_weight,
                            committee_grid=cfg.committee_grid)
    return KindContext("draw", draw, cvec, ref, settings,
                       head_ms=float(learned_cvec[0] - cvec[0]), log=lambda _: None)


def estimate_rule(draw: PredictionTable, pool: PredictionTable, cvec: np.ndarray,
                  learned_cvec: np.ndarray, ref: int, cfg: GuaranteeConfig
                  ) -> dict[float, Deployed]:
    """Today's rule on one draw, at every level >= 0: the deployed answer per level (a
    negative level has none: the rule falls back to the reference, which cannot meet it, so
    evaluate-routers refuses such levels without certification)."""
    ctx = _context(draw, cvec, learned_cvec, ref, cfg, cfg.seed)
    out = {}
    for s in [s for s in cfg.sacrifices if s >= 0]:
        target = ctx.ref_accuracy - s
        cs, _ = cheapest_single(draw.correct, cvec, ref, target, cfg.margin_z)
        fitted = {k.name: k(ctx).fit(s, target) for k in _kinds(cfg)}
        options = [Candidate("cheapest-single", 0, float(cvec[cs]), True)] + \
            [k.candidate_ for k in fitted.values()]
        pick = select_deployable(options)
        out[s] = (_single("estimate", pool, cvec, cs) if pick.method == "cheapest-single"
                  else _deployed("estimate", fitted[pick.method], pool))
    return out


def certified_rule(draw: PredictionTable, pool: PredictionTable, cvec: np.ndarray,
                   learned_cvec: np.ndarray, ref: int, cfg: GuaranteeConfig,
                   seed: int) -> dict[float, Deployed]:
    """The certified rule on one draw, at every level."""
    base = _context(draw, cvec, learned_cvec, ref, cfg, seed)
    ctx = certify_context("draw", draw, cvec, ref, base.settings, select_share=cfg.select_share,
                          head_ms=base.head_ms, log=base.log)
    out = {}
    names = list(draw.model_names)
    for s in cfg.sacrifices:
        lv = certify_level(ctx, s, cfg.delta, _kinds(cfg))
        sel = lv.selected
        dep = (_single("certified", pool, cvec, names.index(sel.split(":", 1)[1]))
               if sel.startswith("single:") else _deployed("certified", lv.kinds[sel], pool))
        dep.promised = bool(lv.certificates[sel].certified)
        out[s] = dep
    return out


def _single(rule: str, pool: PredictionTable, cvec: np.ndarray, m: int) -> Deployed:
    return Deployed(rule, "single", np.full(pool.n_samples, m, dtype=np.int64), float(cvec[m]))


def _deployed(rule: str, kind: RouterKind, pool: PredictionTable) -> Deployed:
    """A fitted cascade kind's answer on the population and its expected cost there."""
    view = TestView(pool, None, None)
    chosen = kind.simulate(view)
    return Deployed(rule, kind.name, chosen, cascade_cost(chosen, kind.stages(), kind.cvec),
                    preds=kind.predictions(view, chosen))


def accuracy_on(dep: Deployed, pool: PredictionTable) -> float:
    """A deployed answer's accuracy on the population: its own answers where it has them (a
    committee's mean), else each image's chosen model's."""
    if dep.preds is not None:
        return float(np.mean(np.asarray(dep.preds) == pool.labels))
    return float(pool.correct[np.arange(pool.n_samples), dep.chosen].mean())


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for k successes in n trials."""
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def run_guarantee(val: PredictionTable, test: PredictionTable | None, cvec: np.ndarray,
                  zoos: dict[str, list[str]], cfg: GuaranteeConfig,
                  learned_extra_ms: float = 0.0, draw_size: int | None = None
                  ) -> list[dict[str, Any]]:
    """Rows of ``guarantee.csv``: per zoo, rule and level, the miss rate over ``cfg.draws``
    draws with its 95 % interval, the drop's mean and 90th percentile, the expected speedup.

    ``test`` None: the population is val alone (design choices can be studied without the
    test split); ``draw_size`` (default |val|) images per draw."""
    full = val if test is None else pool_tables(val, test)
    n_draw = int(draw_size or val.n_samples)
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict[str, Any]] = []
    for zoo, names in zoos.items():
        idx = [full.model_names.index(n) for n in names]
        pool = full.select_models(names)
        zc = np.asarray(cvec, dtype=np.float64)[idx]
        lc = zc + learned_extra_ms
        correct_pool = pool.correct
        drops: dict[tuple[str, float], list[float]] = {}
        speed: dict[tuple[str, float], list[float]] = {}
        promised: dict[tuple[str, float], list[bool]] = {}
        bar = tqdm(range(cfg.draws), desc=f"draws ({zoo})", disable=not cfg.progress)
        for d in bar:
            take = rng.integers(0, pool.n_samples, n_draw)
            draw = rows_of(pool, take)
            ref = reference_index(draw, zc)
            ref_acc = float(correct_pool[:, ref].mean())
            answers = {}
            if "estimate" in cfg.rules:
                answers["estimate"] = estimate_rule(draw, pool, zc, lc, ref, cfg)
            if "certified" in cfg.rules:
                answers["certified"] = certified_rule(draw, pool, zc, lc, ref, cfg,
                                                      seed=cfg.seed + d)
            for rule, per_level in answers.items():
                for s, dep in per_level.items():
                    acc = accuracy_on(dep, pool)
                    drops.setdefault((rule, s), []).append(ref_acc - acc)
                    promised.setdefault((rule, s), []).append(dep.promised)
                    speed.setdefault((rule, s), []).append(float(zc[ref]) / dep.cost)
        for (rule, s), dl in drops.items():
            dl_a = np.asarray(dl)
            kept = np.asarray(promised[(rule, s)], dtype=bool)
            k = int(np.sum((dl_a > s + 1e-12) & kept))
            lo, hi = clopper_pearson(k, len(dl_a))
            sp = np.asarray(speed[(rule, s)])
            rows.append({"zoo": zoo, "rule": rule, "sacrifice": s, "delta": cfg.delta,
                         "draws": len(dl_a), "misses": k, "miss_rate": k / len(dl_a),
                         "miss_lo": lo, "miss_hi": hi, "mean_drop": float(dl_a.mean()),
                         "p90_drop": float(np.quantile(dl_a, 0.9)),
                         "median_speedup": float(np.median(sp)), "mean_speedup": float(sp.mean()),
                         "promised": float(kept.mean()),
                         "max_stages": cfg.max_stages, "learned": cfg.learned,
                         "committee": cfg.committee,
                         "estimate_weight": (ESTIMATE_WEIGHT if cfg.estimate_weight is None
                                             else cfg.estimate_weight),
                         "committee_grid": cfg.committee_grid or cfg.grid,
                         "n_val": n_draw, "population": pool.n_samples})
    rows.sort(key=lambda r: (r["zoo"] != "all", r["zoo"], r["sacrifice"], r["rule"]))
    return rows


@dataclass
class GuaranteeVerdict:
    """The two targets of issue 31's benchmark, judged from ``guarantee.csv`` rows."""

    lines: list[str]
    passed: dict[str, bool]


def judge(rows: Sequence[dict[str, Any]], *, from_level: float = 0.005,
          price: float = 0.8) -> GuaranteeVerdict:
    """PASS/FAIL per zoo: the certified miss rate <= delta at every level >= ``from_level``,
    and its median expected speedup >= ``price`` x the estimate rule's there."""
    lines, passed = [], {}
    zoos = list(dict.fromkeys(r["zoo"] for r in rows))
    for zoo in zoos:
        at = {(r["rule"], float(r["sacrifice"])): r for r in rows if r["zoo"] == zoo}
        levels = sorted({s for _, s in at if s >= from_level - 1e-12})
        cert = [at[("certified", s)] for s in levels if ("certified", s) in at]
        if not cert:
            continue
        delta = float(cert[0]["delta"])
        worst = max(cert, key=lambda r: float(r["miss_rate"]))
        ok = all(float(r["miss_rate"]) <= delta + 1e-12 for r in cert)
        passed[f"miss_rate_{zoo}"] = ok
        lines.append(f"[{'PASS' if ok else 'FAIL'}] zoo {zoo}: certified miss rate <= delta "
                     f"{delta:g} at every level >= {100 * from_level:g}%: worst "
                     f"{100 * float(worst['miss_rate']):.1f}% (95% CI "
                     f"{100 * float(worst['miss_lo']):.1f}-{100 * float(worst['miss_hi']):.1f}%) "
                     f"at s={float(worst['sacrifice']):g}")
        ratios = [(s, float(at[("certified", s)]["median_speedup"])
                   / float(at[("estimate", s)]["median_speedup"]))
                  for s in levels if ("estimate", s) in at and ("certified", s) in at]
        if ratios:
            s_min, r_min = min(ratios, key=lambda t: t[1])
            ok = r_min >= price - 1e-12
            passed[f"price_{zoo}"] = ok
            lines.append(f"[{'PASS' if ok else 'FAIL'}] zoo {zoo}: certified median expected "
                         f"speedup >= {price:g}x the estimate rule's at every level >= "
                         f"{100 * from_level:g}%: lowest {r_min:.2f}x at s={s_min:g}")
    return GuaranteeVerdict(lines, passed)


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The table the script prints."""
    out = [f"{'zoo':<5}{'rule':<11}{'s':>7}{'miss':>8}{'95% CI':>15}{'mean drop':>11}"
           f"{'p90 drop':>10}{'x ref (median)':>16}{'promised':>10}"]
    for r in rows:
        out.append(f"{r['zoo']:<5}{r['rule']:<11}{float(r['sacrifice']):>7g}"
                   f"{100 * float(r['miss_rate']):>7.1f}%"
                   f"{100 * float(r['miss_lo']):>7.1f}-{100 * float(r['miss_hi']):.1f}%"
                   f"{100 * float(r['mean_drop']):>10.2f}p{100 * float(r['p90_drop']):>9.2f}p"
                   f"{float(r['median_speedup']):>15.2f}x{100 * float(r['promised']):>9.0f}%")
    return "\n".join(out)


def run_costs(run: str | Path) -> tuple[np.ndarray, list[str], dict[str, list[str]], float]:
    """(ms per image, model names, zoo -> model names, extra ms of a learned stage) from the
    run's ``routers/fits.json`` (written by evaluate-routers): the costs selection uses."""
    path = Path(run) / "routers" / "fits.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `evaluate-routers --run {run}` "
                                "first (its measured costs are what selection minimises)")
    fits = json.loads(path.read_text())
    names = list(fits["ms_per_image"])
    over = fits.get("router_overhead_ms") or {}
    cvec = np.array([fits["ms_per_image"][n] for n in names]) + float(over.get("stage_ms", 0.0))
    zoos = {z: list(f["models"]) for z, f in fits.get("zoos", {}).items()}
    return cvec, names, zoos or {"all": names}, float(over.get("head_ms", 0.0))
