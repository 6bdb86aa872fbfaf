"""evaluate-routers as a library: fit every router on validation, score and time it on test.

For each sacrifice level s (target: the reference's accuracy minus s, the reference being the
most accurate single model on val):

- ``single:<m>`` / ``best-single:<ref>``: every zoo model alone, timed by the same harness;
- ``cheapest-single:<m>``: the cheapest model whose val accuracy (minus the margin) meets the
  level's target: the baseline a router has to beat (``speedup_vs_cheapest_single``);
- ``oracle-<kind>``: label oracle policies simulated from the test table (``oracle.metrics``);
- ``oracle-<kind>-executed``: the same policies executed (routing by the true label, timed);
- ``ceiling``: the per-sample ceiling (cheapest right model per sample), executed and timed;
  ``ceiling-budget``: the least-cost per-sample assignment holding s (simulated);
- ``dispatcher-label`` / ``dispatcher-sample``: the learned dispatcher in both modes;
- ``cascade``: the confidence cascade;
- ``learned-cascade`` (family ``learned``): a cascade whose stages stop on a deferral head's
  score (a logistic regression on the stage's own probabilities, ``router.deferral``), the
  heads trained on one part of val and the thresholds chosen on the other;
- ``random~<router>``: a cost-matched random router for each deployable router (simulated).

Everything is fitted twice, over two zoos (column ``zoo``): ``all`` (every model of the run)
and ``base`` (the uncompressed models only), so a reader sees what routing adds beyond int8.
Fitting (``fit_zoo``) sees the validation split only; at each level it also *selects* the one
deployable answer (``selected = 1``): of the cheapest adequate single model, both cascades and
both dispatchers, the one whose fit met the target on val at the least expected cost
(``fit_ms_per_image``). Its test row is reported as it comes out. A cascade's early-stage time
on inputs that went on is measured as ``wasted_seconds``; ``overhead_share`` is
(router + wasted seconds) / routed seconds. The oracle policies are written to
``RUN/policies/`` with the costs they were fitted with (the page reads them; it never refits).

Metrics of routed methods come from the test table given each router's decisions on the whole
test split (dispatcher decisions by running it, cascade decisions by simulation at table
precision, the learned cascade's from its heads' scores on the test table's probabilities).
Timing runs the routed classifier for real on the first ``timing_samples`` test images (a
first run gives the answers and warms up; then every distinct routing is timed round-robin,
median of repeats, threads fixed); ``agree_with_table`` checks that executed answers equal
the table's. With ``timing_samples`` >= N the executed answers are scored directly.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from oracle.io import write_csv, write_json
from oracle.metrics import classification_metrics
from oracle.policy import LABEL_KINDS, fit_policy, per_sample_choice, reference_index
from oracle.table import CostTable, PredictionTable
from router.artifact import RoutedClassifier
from router.base import AssignmentRouter, ConstantRouter, Router, RouterError, \
    accuracy_lower_bound
from router.cascade import CascadeRouter, cascade_candidates, select_cascade, simulate_cascade
from router.deferral import LearnedCascadeRouter, learned_candidates, select_learned
from router.dispatcher import Dispatcher, DispatcherConfig, DispatcherFit, choose_threshold, \
    dispatcher_ms_per_image, dispatcher_scores, fit_dispatcher
from router.selection import Candidate, cheapest_single, select_deployable
from router.execute import ExecResult, Timing, benchmark_interleaved, execute_cascade, \
    execute_routed, model_ms_per_image
from zoo.checkpoint import load_model
from zoo.data import DatasetInfo, ImageSet, normalize, prepare_data
from zoo.rundir import RunDir

DEFAULT_SACRIFICES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
LEAD_COLUMNS = ["method", "family", "zoo", "sacrifice", "selected", "accuracy", "precision",
                "recall", "f1", "seconds", "images_per_second", "speedup_vs_best",
                "speedup_vs_cheapest_single", "router_seconds", "wasted_seconds",
                "router_share", "overhead_share", "budget_held", "target_accuracy",
                "accuracy_drop", "macs_per_image", "router_macs", "routing_accuracy",
                "gap_recovered", "random_accuracy", "expected_ms_per_image", "fit_ms_per_image",
                "val_accuracy", "agree_with_table", "timing_samples", "n_samples", "threads",
                "repeats", "settings"]
ZOOS = ("all", "base")
DEPLOYABLE = ("dispatcher", "cascade", "learned")
_EPS = 1e-9


@dataclass
class EvalConfig:
    """What ``evaluate_run`` fits, times and writes."""

    sacrifices: Sequence[float] = DEFAULT_SACRIFICES
    threads: int = 2
    repeats: int = 3
    warmup: int = 1
    timing_samples: int | None = 2000   # None: time on the whole test split
    batch_size: int = 256
    oracle_kinds: Sequence[str] = LABEL_KINDS
    label_policy: str = "budget"         # oracle policy the label dispatcher maps through
    cascade_max_stages: int = 3
    cascade_grid: int = 24
    learned_fit_share: float = 0.5       # learned cascade: share of val its heads train on
    costs: str = "measured"              # "measured": ms/image timed here on val; "profile": costs.json
    cost_samples: int = 1000             # val images the measured costs are timed on
    margin_z: float = 1.0                # fits keep val accuracy - z paired SEs >= target (1-SE rule)
    dispatcher_time_share: float | None = 0.25  # dispatcher ms <= this x fastest model's (None: off)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    seed: int = 0
    save_routers: bool = True
    embed_models: bool = False           # copy zoo checkpoints into each RUN/routers/*.pt
    zoos: Sequence[str] = ZOOS           # "all": every model; "base": the uncompressed ones
    progress: bool = True

    def __post_init__(self) -> None:
        self.sacrifices = [float(s) for s in self.sacrifices]
        if not self.sacrifices or any(not 0.0 <= s <= 1.0 for s in self.sacrifices):
            raise RouterError(f"sacrifices must be fractions in [0, 1] (0.01 = one point), got "
                              f"{self.sacrifices}")
        if self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise RouterError("need threads >= 1, repeats >= 1, warmup >= 0")
        if self.costs not in ("measured", "profile"):
            raise RouterError(f"costs must be 'measured' or 'profile', got {self.costs!r}")
        if not 0 < self.learned_fit_share < 1:
            raise RouterError(f"learned_fit_share must be in (0, 1), got {self.learned_fit_share}")
        if self.margin_z < 0 or self.cost_samples < 1:
            raise RouterError("need margin_z >= 0 and cost_samples >= 1")
        if self.dispatcher_time_share is not None and self.dispatcher_time_share <= 0:
            raise RouterError("dispatcher_time_share must be > 0 (or None to switch the time cap off)")
        if self.label_policy not in LABEL_KINDS:
            raise RouterError(f"label_policy must be one of {LABEL_KINDS}, got {self.label_policy!r}")
        if not self.zoos or any(z not in ZOOS for z in self.zoos):
            raise RouterError(f"zoos must be some of {ZOOS}, got {list(self.zoos)}")
        bad = [k for k in self.oracle_kinds if k not in LABEL_KINDS]
        if bad:
            raise RouterError(f"unknown oracle kinds {bad}; use some of {LABEL_KINDS}")


@dataclass
class RunInputs:
    """Everything evaluate needs from a run directory, aligned with the tables."""

    root: Path
    val: PredictionTable
    test: PredictionTable
    costs: CostTable
    cvec: np.ndarray                 # (M,) ms per image, table order
    macs: np.ndarray                 # (M,) MACs per image
    models: list[nn.Module]
    infos: list[DatasetInfo]
    checkpoints: list[Path]
    val_images: torch.Tensor         # (N_val, C, H, W) uint8, val table order
    test_images: torch.Tensor        # (N_test, C, H, W) uint8, test table order
    info: DatasetInfo


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    preds: dict[tuple[str, str, float], np.ndarray]   # (zoo, method, sacrifice) -> (N,) preds
    chosen: dict[tuple[str, str, float], np.ndarray]  # ... -> (N,) run-wide model indices
    fits: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


# ---- inputs -------------------------------------------------------------------------------

def images_for_table(split: ImageSet, table: PredictionTable) -> torch.Tensor:
    """The split's images in the table's row order (``sample_ids`` are the split's ids)."""
    ids = split.ids.numpy()
    pos = {int(i): p for p, i in enumerate(ids)}
    missing = [int(i) for i in table.sample_ids if int(i) not in pos]
    if missing:
        raise RouterError(f"table {table.split!r} names {len(missing)} sample ids not in the run's "
                          f"{table.split} split (e.g. {missing[:3]}); re-run `profile-zoo`")
    idx = torch.as_tensor([pos[int(i)] for i in table.sample_ids], dtype=torch.long)
    return split.images.index_select(0, idx)


def load_run_inputs(run: str | Path, progress: bool = False) -> RunInputs:
    """Tables (checked against the run's checkpoints), costs, models and aligned images."""
    from zoo.profile import load_tables
    rd = RunDir(run)
    tables = load_tables(rd.root, ("val", "test"))
    val, test = tables["val"], tables["test"]
    costs = CostTable.load(rd.costs)
    names = val.model_names
    bundle = prepare_data(rd.root, **rd.load_config().data_kwargs())
    models, infos, ckpts = [], [], []
    for m in tqdm(names, desc="load models", disable=not progress, leave=False):
        model, ckpt = load_model(rd.checkpoint(m))
        models.append(model)
        infos.append(DatasetInfo.from_dict(ckpt["data"]) if ckpt.get("data") else bundle.info)
        ckpts.append(rd.checkpoint(m))
    return RunInputs(rd.root, val, test, costs, costs.vector(names, "ms_per_image"),
                     costs.vector(names, "macs"), models, infos, ckpts,
                     images_for_table(bundle.val, val), images_for_table(bundle.test, test),
                     bundle.info)


# ---- helpers ------------------------------------------------------------------------------

def random_matched(chosen: np.ndarray, target_ms: float, cvec: np.ndarray, ref: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random router with the same expected cost: (assignment (N,), model shares q (M,)).

    It sends inputs to models at random in the router's own answer shares; when the router
    paid more than those shares cost (a cascade also pays for the stages an input passed
    through), the missing cost is spent on the reference model.
    """
    m = len(cvec)
    q = np.bincount(chosen, minlength=m) / max(1, len(chosen))
    base = float(q @ cvec)
    if target_ms > base + _EPS and cvec[ref] > base + _EPS:
        lam = min(1.0, (target_ms - base) / (cvec[ref] - base))
        q = (1 - lam) * q
        q[ref] += lam
    counts = np.floor(q * len(chosen)).astype(int)
    rest = len(chosen) - counts.sum()
    if rest > 0:
        frac = q * len(chosen) - counts
        counts[np.argsort(-frac, kind="stable")[:rest]] += 1
    assign = np.repeat(np.arange(m), counts)
    rng.shuffle(assign)
    return assign.astype(np.int64), q


def cascade_cost(chosen: np.ndarray, stages: Sequence[int], per_model: np.ndarray) -> float:
    """Expected per-image cost of a cascade whose answers came from ``chosen``."""
    stages = list(stages)
    pos = {m: k for k, m in enumerate(stages)}
    reached = np.array([pos[int(c)] for c in chosen])            # last stage run per input
    return float(sum(per_model[m] * np.mean(reached >= k) for k, m in enumerate(stages)))


class LabelOracleRouter(Router):
    """Routes by the TRUE label through a policy's table: a bound, never deployable."""

    def __init__(self, model_names: list[str], label_to_model: np.ndarray, labels: np.ndarray):
        self.model_names = list(model_names)
        self.l2m = np.asarray(label_to_model, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)

    def route(self, images: torch.Tensor) -> np.ndarray:
        if len(images) != len(self.labels):
            raise RouterError("the label oracle holds labels for a different number of images")
        return self.l2m[self.labels]

    def describe(self) -> dict[str, Any]:
        return {"type": "label-oracle", "deployable": False,
                "label_to_model": [self.model_names[m] for m in self.l2m]}


def _l2m(policy, n_classes: int) -> np.ndarray:
    idx = policy.label_indices()
    return np.array([idx.get(c, policy.reference_index) for c in range(n_classes)], dtype=np.int64)


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
            log: Callable[[str], None] = print) -> ZooFit:
    """Fit oracle policies, both dispatchers, both cascades and the cheapest adequate single
    model at every level, and select the deployed answer per level. Sees the val split only."""
    names = list(val.model_names)
    ref = reference_index(val, cvec)
    ref_val_acc = float(val.correct[:, ref].mean())
    budget_macs = float(macs.min()) / 4.0
    max_ms = (None if cfg.dispatcher_time_share is None
              else cfg.dispatcher_time_share * float(cvec.min()))
    record: dict[str, Any] = {"reference": names[ref], "models": names,
                              "dispatcher_max_macs": budget_macs,
                              "dispatcher_max_ms_per_image": max_ms}
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
    cands = cascade_candidates(val, cvec, max_stages=cfg.cascade_max_stages, grid=cfg.cascade_grid,
                               reference=ref)
    record["cascade_candidates"] = int(len(cands.accuracy))
    t0 = time.perf_counter()
    lcands = learned_candidates(val, cvec, reference=ref, max_stages=cfg.cascade_max_stages,
                                grid=cfg.cascade_grid, fit_share=cfg.learned_fit_share,
                                seed=cfg.seed)
    record["learned_cascade"] = {
        "fit_samples": int(len(lcands.fit_index)),
        "threshold_samples": int(len(lcands.threshold_index)),
        "candidates": int(len(lcands.cands.accuracy)),
        "reference_threshold_accuracy": lcands.reference_accuracy,
        "fit_seconds": time.perf_counter() - t0,
        "heads": {n: h.state() for n, h in zip(names, lcands.heads)}}
    hold_l = disp["label"].holdout_index
    hold_s = disp["sample"].holdout_index
    levels = []
    for s in cfg.sacrifices:
        target = ref_val_acc - s
        policies = {kind: fit_policy(kind, val, cvec, s)
                    for kind in dict.fromkeys(list(cfg.oracle_kinds) + [cfg.label_policy])}
        cs, cs_bound = cheapest_single(val.correct, cvec, ref, target, cfg.margin_z)
        cand = {"cheapest-single": Candidate("cheapest-single", float(val.correct[:, cs].mean()),
                                             float(cvec[cs]), True)}
        # dispatcher, label mode: predicted label mapped through the oracle policy (if the
        # policy's expected cost on val plus the network's own is not below the reference's,
        # it runs the reference alone and skips its network)
        pol = policies[cfg.label_policy]
        dl = Dispatcher.from_fit(disp["label"], cvec, policy=pol, fallback=ref)
        skip = pol.cost(cvec) + disp_ms["label"] >= cvec[ref] and dl.constant_choice is None
        if skip:
            dl = Dispatcher("label", dl.net, dl.info, names, cvec,
                            label_to_model=np.full(val.n_classes, ref), fallback=ref,
                            macs=dl.network_macs)
        ch = dl.choose(disp["label"].holdout_scores)
        right = val.correct[hold_l, ch]
        hold_ref = val.correct[hold_l, ref]
        bound = float(accuracy_lower_bound(right, hold_ref, cfg.margin_z)[0])
        cand["dispatcher-label"] = Candidate(
            "dispatcher-label", float(right.mean()), _routed_ms(ch, cvec, dl, disp_ms["label"]),
            bound >= float(hold_ref.mean()) - s - _EPS)
        # dispatcher, sample mode: cheapest model predicted right with chance >= tau
        hold_correct = val.correct[hold_s]
        tau, h_acc, h_cost = choose_threshold(disp["sample"].holdout_scores, hold_correct, cvec,
                                              float(hold_correct[:, ref].mean()) - s, fallback=ref,
                                              z=cfg.margin_z, router_cost=disp_ms["sample"])
        ds = Dispatcher.from_fit(disp["sample"], cvec, threshold=tau, fallback=ref)
        cand["dispatcher-sample"] = Candidate("dispatcher-sample", h_acc, h_cost, True)
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


def zoo_indices(inp: RunInputs, zoos: Sequence[str]) -> dict[str, np.ndarray]:
    """Model positions of each zoo: ``all`` (every model) and ``base`` (uncompressed models:
    those whose card names no parent). ``base`` is left out where it equals ``all``."""
    M = inp.val.n_models
    out: dict[str, np.ndarray] = {}
    for zoo in zoos:
        if zoo == "all":
            out["all"] = np.arange(M)
        elif zoo == "base":
            rd = RunDir(inp.root)
            base = [i for i, m in enumerate(inp.val.model_names)
                    if not (rd.card(m).exists() and rd.read_card(m).get("parent"))]
            if base and len(base) < M:
                out["base"] = np.asarray(base, dtype=np.int64)
        else:
            raise RouterError(f"unknown zoo {zoo!r}; use 'all' and/or 'base'")
    return out


# ---- timing -------------------------------------------------------------------------------

class _Timer:
    """Runs each distinct routing once now (answers, and a first warm-up), times them all later.

    ``time``/``routed`` return ``(result, key)``: the answers right away; identical settings
    share a key. ``measure`` then times every key round-robin (``benchmark_interleaved``):
    ``warmup - 1`` more untimed rounds, then ``repeats`` timed rounds, median per key.
    """

    def __init__(self, inp: RunInputs, cfg: EvalConfig):
        self.inp, self.cfg = inp, cfg
        n = inp.test.n_samples
        self.k = n if cfg.timing_samples is None else min(n, int(cfg.timing_samples))
        self.x = inp.test_images[:self.k]
        self.runs: dict[Any, Callable[[], ExecResult]] = {}
        self.results: dict[Any, ExecResult] = {}

    def time(self, key: Any, run: Callable[[torch.Tensor], ExecResult]) -> tuple[ExecResult, Any]:
        if key not in self.runs:
            self.runs[key] = lambda: run(self.x)
            self.results[key] = self.runs[key]()
        return self.results[key], key

    def routed(self, key: Any, index: np.ndarray,
               make_router: Callable[[slice], Router]) -> tuple[ExecResult, Any]:
        """Time a router over the models at ``index`` (answers indexed into that zoo)."""
        models = [self.inp.models[i] for i in index]
        infos = [self.inp.infos[i] for i in index]
        bs = self.cfg.batch_size
        return self.time(key, lambda x: execute_routed(make_router(slice(0, len(x))), x,
                                                       models, infos, bs))

    def measure(self) -> dict[Any, Timing]:
        return benchmark_interleaved(self.runs, self.k, warmup=max(0, self.cfg.warmup - 1),
                                     repeats=self.cfg.repeats, progress=self.cfg.progress)


# ---- scoring on test (numpy) and the whole evaluation -------------------------------------

class _Scorer:
    """Turns one zoo's decisions on the test split into result rows (timing filled in later)."""

    def __init__(self, inp: RunInputs, zf: ZooFit, cfg: EvalConfig, rng: np.random.Generator):
        self.inp, self.zf, self.cfg, self.rng = inp, zf, cfg, rng
        self.test = inp.test.select_models(zf.names)
        self.val = inp.val.select_models(zf.names)
        self.macs = inp.macs[zf.index]
        self.ref_test_acc = float(self.test.correct[:, zf.ref].mean())
        self.ceiling_choice = per_sample_choice(self.test, zf.cvec, reference=zf.ref)
        self.ceiling_acc = float(self.test.correct[np.arange(self.test.n_samples),
                                                   self.ceiling_choice].mean())
        self.acc_test = self.test.accuracy()
        self.rows: list[dict[str, Any]] = []
        self.preds: dict[tuple[str, str, float], np.ndarray] = {}
        self.chosen: dict[tuple[str, str, float], np.ndarray] = {}
        self.pending: list[tuple[dict[str, Any], Any]] = []

    def emit(self, method: str, family: str, s: float, chosen: np.ndarray,
             timed: tuple[ExecResult, Any] | None, *, expected_ms: float | None = None,
             router_macs: int = 0, routing_accuracy: float | None = None,
             val_accuracy: float | None = None, fit_ms: float | None = None,
             selected: bool = False, settings: dict | None = None,
             stages: Sequence[int] | None = None, random_of: bool = True) -> dict[str, Any]:
        test, zf, N = self.test, self.zf, self.test.n_samples
        preds = test.preds[np.arange(N), chosen]
        agree = None
        if timed is not None:
            res = timed[0]
            k = len(res.preds)
            agree = float((res.preds == preds[:k]).mean()) if k else None
            if k == N:
                preds = res.preds
        row: dict[str, Any] = {"method": method, "family": family, "zoo": zf.zoo, "sacrifice": s,
                               "selected": int(selected)}
        row.update(classification_metrics(test.labels, preds, test.n_classes))
        share = np.bincount(chosen, minlength=len(zf.names)) / N
        model_macs = (cascade_cost(chosen, stages, self.macs) if stages is not None
                      else float(share @ self.macs))
        exp_ms = expected_ms if expected_ms is not None else (
            cascade_cost(chosen, stages, zf.cvec) if stages is not None else float(share @ zf.cvec))
        row.update({"budget_held": bool(row["accuracy"] >= self.ref_test_acc - s - _EPS),
                    "target_accuracy": self.ref_test_acc - s,
                    "accuracy_drop": self.ref_test_acc - row["accuracy"],
                    "macs_per_image": model_macs + router_macs, "router_macs": router_macs,
                    "routing_accuracy": routing_accuracy, "expected_ms_per_image": exp_ms,
                    "fit_ms_per_image": fit_ms, "val_accuracy": val_accuracy,
                    "agree_with_table": agree, "n_samples": N,
                    "settings": json.dumps(settings or {}, sort_keys=True)})
        if timed is not None:
            self.pending.append((row, timed[1]))
        if random_of:
            _, q = random_matched(chosen, exp_ms, zf.cvec, zf.ref, self.rng)
            r_acc = float(q @ self.acc_test)
            row["random_accuracy"] = r_acc
            gap = self.ceiling_acc - r_acc
            row["gap_recovered"] = (row["accuracy"] - r_acc) / gap if gap > _EPS else None
        for name in self.inp.test.model_names:
            row[f"share_{name}"] = 0.0
        for name, sh in zip(zf.names, share):
            row[f"share_{name}"] = float(sh)
        self.rows.append(row)
        key = (zf.zoo, method, s)
        self.preds[key] = np.asarray(preds, dtype=np.int64)
        self.chosen[key] = zf.index[chosen]          # indices into the run's whole zoo
        return row

    def emit_random(self, of: dict[str, Any], chosen: np.ndarray, s: float, exp_ms: float) -> None:
        assign, _ = random_matched(chosen, exp_ms, self.zf.cvec, self.zf.ref, self.rng)
        self.emit(f"random~{of['method']}", "random", s, assign, None, random_of=False,
                  settings={"matched_to": of["method"], "expected_ms_per_image": exp_ms})


def _score_zoo(inp: RunInputs, zf: ZooFit, cfg: EvalConfig, timer: _Timer, sc: _Scorer,
               label_scores: np.ndarray, sample_scores: np.ndarray,
               saved: dict[str, str]) -> None:
    """All rows of one zoo at every level: decisions on test, timed runs queued on ``timer``."""
    test, names, idx, cvec, ref = sc.test, zf.names, zf.index, zf.cvec, zf.ref
    M, N = len(names), test.n_samples
    tag = "" if zf.zoo == "all" else f"{zf.zoo}/"
    singles = {m: timer.routed(("single", int(idx[m])), idx[[m]],
                               lambda sl, m=m: ConstantRouter([names[m]], 0)) for m in range(M)}
    ceil_timed = timer.routed((zf.zoo, "ceiling"), idx, lambda sl: AssignmentRouter(
        names, sc.ceiling_choice[sl], "per-sample-ceiling"))
    routers_dir = inp.root / "routers" / zf.zoo if zf.zoo != "all" else inp.root / "routers"
    val_acc = sc.val.accuracy()
    for lv in zf.levels:
        s = lv.sacrifice
        for m in range(M):
            sc.emit(f"single:{names[m]}", "single", s, np.full(N, m, dtype=np.int64), singles[m],
                    val_accuracy=float(val_acc[m]), fit_ms=float(cvec[m]))
        sc.emit(f"best-single:{names[ref]}", "best-single", s, np.full(N, ref, dtype=np.int64),
                singles[ref], val_accuracy=zf.ref_val_acc, fit_ms=float(cvec[ref]))
        cs = lv.cheapest_single
        sc.emit(f"cheapest-single:{names[cs]}", "cheapest-single", s,
                np.full(N, cs, dtype=np.int64), singles[cs], val_accuracy=float(val_acc[cs]),
                fit_ms=float(cvec[cs]), selected=lv.selected == "cheapest-single",
                settings={"model": names[cs], "rule": "cheapest model whose val accuracy minus "
                          f"{cfg.margin_z:g} paired SE meets the target"})
        sc.emit("ceiling", "ceiling", s, sc.ceiling_choice, ceil_timed,
                settings={"deployable": False, "rule": "cheapest right model per sample"})
        sc.emit("ceiling-budget", "ceiling", s,
                per_sample_choice(test, cvec, reference=ref, sacrifice=s), None,
                settings={"deployable": False, "rule": "least-cost per-sample assignment holding s"})
        for kind in cfg.oracle_kinds:
            pol = lv.policies[kind]
            l2m = _l2m(pol, test.n_classes)
            ch = l2m[test.labels]
            sc.emit(f"oracle-{kind}", "oracle", s, ch, None, val_accuracy=pol.meta["val_accuracy"],
                    fit_ms=pol.meta["expected_cost"],
                    settings={"label_to_model": [names[i] for i in l2m], "simulated": True})
            timed = timer.routed((zf.zoo, "labels", tuple(l2m)), idx,
                                 lambda sl, l2m=l2m: LabelOracleRouter(names, l2m, test.labels[sl]))
            sc.emit(f"oracle-{kind}-executed", "oracle-executed", s, ch, timed,
                    val_accuracy=pol.meta["val_accuracy"], fit_ms=pol.meta["expected_cost"],
                    settings={"label_to_model": [names[i] for i in l2m], "deployable": False})
        deployable: list[tuple[dict[str, Any], np.ndarray, float]] = []
        dl, c = lv.dispatcher_label, lv.candidates["dispatcher-label"]
        ch = dl.choose(label_scores)
        timed = timer.routed((zf.zoo, "disp-label", tuple(dl.label_to_model)), idx,
                             lambda sl, r=dl: r)
        row = sc.emit("dispatcher-label", "dispatcher", s, ch, timed, router_macs=dl.macs_per_image,
                      routing_accuracy=float((ch == lv.policies[cfg.label_policy].route(
                          test.labels)).mean()),
                      expected_ms=_routed_ms(ch, cvec, dl, zf.disp_ms["label"]),
                      val_accuracy=c.val_accuracy, fit_ms=c.fit_ms_per_image,
                      selected=lv.selected == "dispatcher-label",
                      settings={**dl.describe(), "policy": cfg.label_policy,
                                "network_skipped": dl.constant_choice is not None,
                                "skipped_because_not_cheaper": lv.label_skipped,
                                "val_meets_target": c.meets_target})
        deployable.append((row, ch, row["expected_ms_per_image"]))
        saved[f"{tag}dispatcher-label@{s:g}"] = _save(routers_dir, "dispatcher-label", s, dl,
                                                      inp, cfg, idx)
        ds, c = lv.dispatcher_sample, lv.candidates["dispatcher-sample"]
        ch = ds.choose(sample_scores)
        timed = timer.routed((zf.zoo, "disp-sample", ds.threshold), idx, lambda sl, r=ds: r)
        row = sc.emit("dispatcher-sample", "dispatcher", s, ch, timed,
                      router_macs=ds.macs_per_image,
                      routing_accuracy=float((ch == sc.ceiling_choice).mean()),
                      expected_ms=_routed_ms(ch, cvec, ds, zf.disp_ms["sample"]),
                      val_accuracy=c.val_accuracy, fit_ms=c.fit_ms_per_image,
                      selected=lv.selected == "dispatcher-sample",
                      settings={**ds.describe(), "network_skipped": ds.constant_choice is not None})
        deployable.append((row, ch, row["expected_ms_per_image"]))
        saved[f"{tag}dispatcher-sample@{s:g}"] = _save(routers_dir, "dispatcher-sample", s, ds,
                                                       inp, cfg, idx)
        fit, c = lv.cascade, lv.candidates["cascade"]
        casc = CascadeRouter.from_fit(fit)
        ch = simulate_cascade(test.confidence.astype(np.float16).astype(np.float32),
                              fit.stages, fit.thresholds)
        models = [inp.models[i] for i in idx]
        infos = [inp.infos[i] for i in idx]
        timed = timer.time((zf.zoo, "cascade", tuple(fit.stages), tuple(fit.thresholds)),
                           lambda x, f=fit: execute_cascade(f.stages, f.thresholds, x, models,
                                                            infos, cfg.batch_size))
        row = sc.emit("cascade", "cascade", s, ch, timed, stages=fit.stages,
                      val_accuracy=c.val_accuracy, fit_ms=c.fit_ms_per_image,
                      selected=lv.selected == "cascade",
                      settings={**casc.describe(), "val_stage_reach": fit.stage_reach,
                                "val_se": fit.val_se, "z": fit.z})
        deployable.append((row, ch, row["expected_ms_per_image"]))
        saved[f"{tag}cascade@{s:g}"] = _save(routers_dir, "cascade", s, casc, inp, cfg, idx)
        lfit, c = lv.learned_cascade, lv.candidates["learned-cascade"]
        learned = LearnedCascadeRouter.from_fit(lfit)
        ch = learned.simulate(test.probs)
        lstages, lths = lfit.cascade.stages, lfit.cascade.thresholds
        timed = timer.time((zf.zoo, "learned-cascade", tuple(lstages), tuple(lths)),
                           lambda x, r=learned: execute_cascade(
                               r.stages, r.thresholds, x, models, infos, cfg.batch_size,
                               scorers=r.scorers()))
        row = sc.emit("learned-cascade", "learned", s, ch, timed, stages=lstages,
                      val_accuracy=c.val_accuracy, fit_ms=c.fit_ms_per_image,
                      selected=lv.selected == "learned-cascade",
                      settings={**learned.describe(), "val_stage_reach": lfit.cascade.stage_reach,
                                "val_se": lfit.cascade.val_se, "z": lfit.cascade.z,
                                "val_target": lfit.target, "fit_samples": lfit.fit_samples,
                                "threshold_samples": lfit.threshold_samples})
        deployable.append((row, ch, row["expected_ms_per_image"]))
        saved[f"{tag}learned-cascade@{s:g}"] = _save(routers_dir, "learned-cascade", s, learned,
                                                     inp, cfg, idx)
        for row, ch, exp_ms in deployable:
            sc.emit_random(row, ch, s, exp_ms)


def evaluate_run(run: str | Path, config: EvalConfig | None = None,
                 inputs: RunInputs | None = None, log: Callable[[str], None] = print) -> EvalResult:
    """Fit on val, score and time on test; write routers.csv, router_predictions.npz,
    routers/ and policies/ (see the module docstring)."""
    cfg = config or EvalConfig()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    inp = inputs or load_run_inputs(run, progress=cfg.progress)
    names_all = inp.test.model_names
    profile_cvec = inp.cvec
    if cfg.costs == "measured":
        # the costs every fit minimises: ms/image timed here, on val images, with the threads,
        # batch size and executor the routers run with (costs.json was timed by another process
        # at another time; on a shared machine its figures can be off several-fold)
        k = min(cfg.cost_samples, inp.val.n_samples)
        cvec_all = model_ms_per_image(inp.models, inp.infos, inp.val_images[:k], cfg.batch_size,
                                      warmup=cfg.warmup, rounds=max(3, cfg.repeats))
    else:
        cvec_all = profile_cvec
    zoos = zoo_indices(inp, cfg.zoos)
    timer = _Timer(inp, cfg)
    rd = RunDir(inp.root)
    log(f"evaluate-routers: {len(names_all)} models, {inp.val.n_samples} val / "
        f"{inp.test.n_samples} test images, zoos {', '.join(f'{z} ({len(i)})' for z, i in zoos.items())}, "
        f"threads {cfg.threads}, timing on {timer.k} test images x {cfg.repeats} interleaved "
        f"repeats after {cfg.warmup} warm-up")
    log("  costs (" + ("measured here on %d val images" % min(cfg.cost_samples, inp.val.n_samples)
                       if cfg.costs == "measured" else "costs.json") + ", ms/image): "
        + ", ".join(f"{n} {c:.3f}" for n, c in zip(names_all, cvec_all)))
    fits: dict[str, Any] = {"costs": cfg.costs, "margin_z": cfg.margin_z,
                            "ms_per_image": dict(zip(names_all, map(float, cvec_all))),
                            "profile_ms_per_image": dict(zip(names_all, map(float, profile_cvec))),
                            "zoos": {}}
    rng = np.random.default_rng(cfg.seed)
    scorers: list[_Scorer] = []
    saved: dict[str, str] = {}
    zoo_fits: list[ZooFit] = []
    for zoo, idx in zoos.items():
        names = [names_all[i] for i in idx]
        # the fit sees the validation split and nothing else
        zf = fit_zoo(zoo, idx, inp.val.select_models(names), inp.val_images, inp.info,
                     cvec_all[idx], inp.macs[idx], cfg, log)
        zoo_fits.append(zf)
        fits["zoos"][zoo] = zf.record
        if zoo == "all":
            fits.update(zf.record)
        with torch.inference_mode():
            label_scores = dispatcher_scores(zf.disp["label"].net, inp.test_images, inp.info,
                                             "label").numpy()
            sample_scores = dispatcher_scores(zf.disp["sample"].net, inp.test_images, inp.info,
                                              "sample").numpy()
        zf.record["dispatcher_label"]["test_label_accuracy"] = float(
            (label_scores.argmax(1) == inp.test.labels).mean())
        sc = _Scorer(inp, zf, cfg, rng)
        _score_zoo(inp, zf, cfg, timer, sc, label_scores, sample_scores, saved)
        scorers.append(sc)
    policy_paths = write_policies(rd, zoo_fits)

    # ---- timing: every distinct routing, round-robin, then the timed columns --------------
    log(f"  timing {len(timer.runs)} distinct routings round-robin: {cfg.repeats} rounds on "
        f"{timer.k} test images")
    timings = timer.measure()
    rows: list[dict[str, Any]] = []
    preds_out: dict[tuple[str, str, float], np.ndarray] = {}
    chosen_out: dict[tuple[str, str, float], np.ndarray] = {}
    for sc in scorers:
        fill_timings(sc.rows, sc.pending, timings)
        rows += sc.rows
        preds_out.update(sc.preds)
        chosen_out.update(sc.chosen)
    fits["seconds"] = time.perf_counter() - t_start
    fits["saved_routers"] = saved
    fits["policies"] = [str(p) for p in policy_paths]
    fits["threads"] = cfg.threads
    result = EvalResult(rows, preds_out, chosen_out, fits)
    result.paths = write_results(rd, result, names_all, inp.test)
    log(format_summary(rows))
    log(f"wrote {result.paths['csv']} and {result.paths['npz']} in {fits['seconds']:.0f}s")
    return result


def fill_timings(rows: list[dict[str, Any]], pending: list[tuple[dict[str, Any], Any]],
                 timings: dict[Any, Timing]) -> None:
    """The timed columns of one zoo's rows, and both speedups (each level's best single and
    cheapest adequate single model of the same zoo, timed in the same rounds)."""
    for row, key in pending:
        tm = timings[key]
        row.update({"seconds": tm.seconds, "images_per_second": tm.images_per_second,
                    "router_seconds": tm.router_seconds, "router_share": tm.router_share,
                    "wasted_seconds": tm.wasted_seconds, "overhead_share": tm.overhead_share,
                    "timing_samples": tm.n_samples, "threads": tm.threads, "repeats": tm.repeats})
    ref_ips: dict[tuple[str, float], dict[str, float]] = {}
    for r in rows:
        if r["family"] in ("best-single", "cheapest-single") and r.get("images_per_second"):
            ref_ips.setdefault((r["zoo"], r["sacrifice"]), {})[r["family"]] = \
                r["images_per_second"]
    for r in rows:
        ips = r.get("images_per_second")
        refs = ref_ips.get((r["zoo"], r["sacrifice"]), {})
        if ips is None:
            continue
        if refs.get("best-single"):
            r["speedup_vs_best"] = ips / refs["best-single"]
        if refs.get("cheapest-single"):
            r["speedup_vs_cheapest_single"] = ips / refs["cheapest-single"]


def write_policies(rd: RunDir, zoo_fits: Sequence[ZooFit]) -> list[Path]:
    """``RUN/policies/<kind>-s<level>.json`` for the whole zoo, ``RUN/policies/<zoo>/...`` for
    the others; each holds the costs it was fitted with (``meta.costs``). Old files go first,
    so the folder holds exactly this evaluation's policies."""
    out = []
    for zf in zoo_fits:
        folder = rd.policies if zf.zoo == "all" else rd.policies / zf.zoo
        if folder.is_dir():
            for old in folder.glob("*.json"):
                old.unlink()
        for lv in zf.levels:
            for kind, pol in lv.policies.items():
                pol.meta["cost_source"] = "ms per image measured by evaluate-routers"
                out.append(pol.save(folder / f"{kind}-s{lv.sacrifice:g}.json"))
    return out


def _routed_ms(chosen: np.ndarray, cvec: np.ndarray, router: Dispatcher, net_ms: float) -> float:
    """Expected ms per image a dispatcher pays: its models plus its network when it runs it."""
    share = np.bincount(chosen, minlength=len(cvec)) / max(1, len(chosen))
    return float(share @ cvec) + (0.0 if router.constant_choice is not None else net_ms)


def _save(directory: Path, method: str, s: float, router: Router, inp: RunInputs,
          cfg: EvalConfig, index: np.ndarray) -> str:
    if not cfg.save_routers:
        return ""
    clf = RoutedClassifier(f"{method}@{s:g}", router, [inp.models[i] for i in index],
                           [inp.infos[i] for i in index], [inp.checkpoints[i] for i in index],
                           cfg.batch_size, meta={"sacrifice": s, "method": method,
                                                 "settings": router.describe()})
    return str(clf.save(directory / f"{method}-s{s:g}.pt", run_root=inp.root,
                        embed=cfg.embed_models))


def write_results(rd: RunDir, result: EvalResult, names: list[str],
                  test: PredictionTable) -> dict[str, Path]:
    """RUN/results/routers.csv, RUN/results/router_predictions.npz, RUN/routers/fits.json."""
    from oracle.io import atomic_write
    columns = LEAD_COLUMNS + [f"share_{m}" for m in names]
    csv_path = write_csv(rd.results / "routers.csv", result.rows, columns)
    keys = list(result.preds)
    arrays = {"zoos": np.array([k[0] for k in keys]),
              "methods": np.array([k[1] for k in keys]),
              "sacrifices": np.array([k[2] for k in keys], dtype=np.float64),
              "preds": np.stack([result.preds[k] for k in keys]).astype(np.int64),
              "chosen": np.stack([result.chosen[k] for k in keys]).astype(np.int64),
              "labels": test.labels, "sample_ids": test.sample_ids,
              "model_names": np.array(names)}

    def write(p: Path) -> None:
        with p.open("wb") as f:
            np.savez_compressed(f, **arrays)
    npz_path = atomic_write(rd.results / "router_predictions.npz", write)
    fits_path = write_json(rd.root / "routers" / "fits.json", result.fits)
    return {"csv": csv_path, "npz": npz_path, "fits": fits_path}


def format_summary(rows: list[dict[str, Any]]) -> str:
    """One line per method, zoo and level: accuracy, drop, images/s, both speedups, overhead
    share, budget, gap; ``*`` marks the answer selected on val."""
    keep = [r for r in rows if r["family"] in ("best-single", "cheapest-single",
                                               "oracle-executed", "ceiling", "dispatcher",
                                               "cascade", "learned")
            and r.get("seconds") is not None]
    out = [f"{'zoo':<5}{'sacrifice':>9} {'method':<34} {'acc':>7} {'drop':>7} {'img/s':>9} "
           f"{'x best':>7} {'x cheap':>7} {'ovh%':>6} {'held':>5} {'gap':>6}"]
    for r in keep:
        gap = r.get("gap_recovered")
        mark = "*" if r.get("selected") else " "
        out.append(f"{r.get('zoo', 'all'):<5}{r['sacrifice']:>9g} {mark}{r['method']:<33} "
                   f"{r['accuracy']:>7.4f} {100 * r['accuracy_drop']:>6.2f}p "
                   f"{r['images_per_second']:>9.0f} "
                   f"{r.get('speedup_vs_best', float('nan')):>6.2f}x "
                   f"{r.get('speedup_vs_cheapest_single', float('nan')):>6.2f}x "
                   f"{100 * r.get('overhead_share', 0.0):>5.1f}% {str(r['budget_held']):>5} "
                   f"{'' if gap is None else f'{gap:.2f}':>6}")
    out.append("(* = the answer selected on val at that level; x cheap = images/s over the "
               "cheapest single model meeting the same target on val)")
    return "\n".join(out)
