"""evaluate-routers as a library: fit every router on validation, score and time it on test.

For each sacrifice level s (target: the reference's accuracy minus s, the reference being the
most accurate single model on val):

- ``single:<m>`` / ``best-single:<ref>``: every zoo model alone, timed by the same harness;
- ``oracle-<kind>``: label oracle policies simulated from the test table (``oracle.metrics``);
- ``oracle-<kind>-executed``: the same policies executed (routing by the true label, timed);
- ``ceiling``: the per-sample ceiling (cheapest right model per sample), executed and timed;
  ``ceiling-budget``: the least-cost per-sample assignment holding s (simulated);
- ``dispatcher-label`` / ``dispatcher-sample``: the learned dispatcher in both modes;
- ``cascade``: the confidence cascade;
- ``random~<router>``: a cost-matched random router for each deployable router (simulated).

Metrics of routed methods come from the test table given each router's decisions on the whole
test split (dispatcher decisions by running it, cascade decisions by simulation at table
precision). Timing runs the routed classifier for real on the first ``timing_samples`` test
images (a first run gives the answers and warms up; then every distinct routing is timed
round-robin, median of repeats, threads fixed); ``agree_with_table`` checks that executed
answers equal the table's. With ``timing_samples`` >= N the executed answers are scored directly.
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
from oracle.metrics import classification_metrics, evaluate_assignment
from oracle.policy import LABEL_KINDS, fit_policy, per_sample_choice, reference_index
from oracle.table import CostTable, PredictionTable
from router.artifact import RoutedClassifier
from router.base import AssignmentRouter, ConstantRouter, Router, RouterError
from router.cascade import CascadeRouter, cascade_candidates, select_cascade, simulate_cascade
from router.dispatcher import Dispatcher, DispatcherConfig, DispatcherFit, choose_threshold, \
    dispatcher_ms_per_image, fit_dispatcher
from router.execute import ExecResult, Timing, benchmark_interleaved, execute_cascade, \
    execute_routed, model_ms_per_image
from zoo.checkpoint import load_model
from zoo.data import DatasetInfo, ImageSet, normalize, prepare_data
from zoo.rundir import RunDir

DEFAULT_SACRIFICES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
LEAD_COLUMNS = ["method", "family", "sacrifice", "accuracy", "precision", "recall", "f1",
                "seconds", "images_per_second", "speedup_vs_best", "router_seconds",
                "router_share", "budget_held", "target_accuracy", "accuracy_drop",
                "macs_per_image", "router_macs", "routing_accuracy", "gap_recovered",
                "random_accuracy", "expected_ms_per_image", "val_accuracy", "agree_with_table",
                "timing_samples", "n_samples", "threads", "repeats", "settings"]
DEPLOYABLE = ("dispatcher", "cascade")
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
    costs: str = "measured"              # "measured": ms/image timed here on val; "profile": costs.json
    cost_samples: int = 1000             # val images the measured costs are timed on
    margin_z: float = 1.0                # fits keep val accuracy - z paired SEs >= target (1-SE rule)
    dispatcher_time_share: float | None = 0.25  # dispatcher ms <= this x fastest model's (None: off)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    seed: int = 0
    save_routers: bool = True
    embed_models: bool = False           # copy zoo checkpoints into each RUN/routers/*.pt
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
        if self.margin_z < 0 or self.cost_samples < 1:
            raise RouterError("need margin_z >= 0 and cost_samples >= 1")
        if self.dispatcher_time_share is not None and self.dispatcher_time_share <= 0:
            raise RouterError("dispatcher_time_share must be > 0 (or None to switch the time cap off)")
        if self.label_policy not in LABEL_KINDS:
            raise RouterError(f"label_policy must be one of {LABEL_KINDS}, got {self.label_policy!r}")
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
    preds: dict[tuple[str, float], np.ndarray]      # (method, sacrifice) -> (N,) test preds
    chosen: dict[tuple[str, float], np.ndarray]
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


# ---- the evaluation -----------------------------------------------------------------------

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

    def routed(self, key: Any, make_router: Callable[[slice], Router]) -> tuple[ExecResult, Any]:
        inp, bs = self.inp, self.cfg.batch_size
        return self.time(key, lambda x: execute_routed(make_router(slice(0, len(x))), x,
                                                       inp.models, inp.infos, bs))

    def measure(self) -> dict[Any, Timing]:
        return benchmark_interleaved(self.runs, self.k, warmup=max(0, self.cfg.warmup - 1),
                                     repeats=self.cfg.repeats, progress=self.cfg.progress)


def evaluate_run(run: str | Path, config: EvalConfig | None = None,
                 inputs: RunInputs | None = None, log: Callable[[str], None] = print) -> EvalResult:
    """Fit on val, score and time on test, write routers.csv, router_predictions.npz, routers/."""
    cfg = config or EvalConfig()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    inp = inputs or load_run_inputs(run, progress=cfg.progress)
    val, test = inp.val, inp.test
    names, M, N = test.model_names, test.n_models, test.n_samples
    profile_cvec = inp.cvec
    if cfg.costs == "measured":
        # the costs every fit minimises: ms/image timed here, on val images, with the threads,
        # batch size and executor the routers run with (costs.json was timed by another process
        # at another time; on a shared machine its figures can be off several-fold)
        k = min(cfg.cost_samples, val.n_samples)
        cvec = model_ms_per_image(inp.models, inp.infos, inp.val_images[:k], cfg.batch_size,
                                  warmup=cfg.warmup, rounds=max(3, cfg.repeats))
    else:
        cvec = profile_cvec
    ref = reference_index(val, cvec)
    ref_val_acc = float(val.correct[:, ref].mean())
    ref_test_acc = float(test.correct[:, ref].mean())
    ceiling_choice = per_sample_choice(test, cvec, reference=ref)
    ceiling_acc = float(test.correct[np.arange(N), ceiling_choice].mean())
    acc_test = test.accuracy()
    timer = _Timer(inp, cfg)
    rd = RunDir(inp.root)
    log(f"evaluate-routers: {M} models, {val.n_samples} val / {N} test images, reference "
        f"{names[ref]} (val {ref_val_acc:.4f}, test {ref_test_acc:.4f}), threads {cfg.threads}, "
        f"timing on {timer.k} test images x {cfg.repeats} interleaved repeats after {cfg.warmup} "
        "warm-up")

    # ---- fit what does not depend on the level (val only) ---------------------------------
    budget_macs = float(inp.macs.min()) / 4.0
    max_ms = (None if cfg.dispatcher_time_share is None
              else cfg.dispatcher_time_share * float(cvec.min()))
    fits: dict[str, Any] = {"reference": names[ref], "dispatcher_max_macs": budget_macs,
                            "dispatcher_max_ms_per_image": max_ms, "costs": cfg.costs,
                            "margin_z": cfg.margin_z,
                            "ms_per_image": dict(zip(names, map(float, cvec))),
                            "profile_ms_per_image": dict(zip(names, map(float, profile_cvec)))}
    log("  costs (" + ("measured here on %d val images" % min(cfg.cost_samples, val.n_samples)
                       if cfg.costs == "measured" else "costs.json") + ", ms/image): "
        + ", ".join(f"{n} {c:.3f}" for n, c in zip(names, cvec)))
    disp: dict[str, DispatcherFit] = {}
    disp_ms: dict[str, float] = {}
    time_x = normalize(inp.val_images[:1024], inp.info)
    for mode in ("label", "sample"):
        t0 = time.perf_counter()
        disp[mode] = fit_dispatcher(mode, inp.val_images, val, inp.info, budget_macs,
                                    cfg.dispatcher, max_ms=max_ms)
        h = (min(disp[mode].history, key=lambda e: e["holdout_loss"])
             if disp[mode].history else {})            # the epoch whose state is kept
        d_ms = disp_ms[mode] = dispatcher_ms_per_image(disp[mode].arch, time_x)
        fits[f"dispatcher_{mode}"] = {"arch": disp[mode].arch.to_dict(), "macs": disp[mode].macs,
                                      "ms_per_image": d_ms,
                                      "time_cap_met": max_ms is None or d_ms <= max_ms,
                                      "train_seconds": time.perf_counter() - t0,
                                      "holdout": len(disp[mode].holdout_index),
                                      "history": disp[mode].history}
        cap = "" if max_ms is None else f", {d_ms:.4f} ms/image (cap {max_ms:.4f})"
        log(f"  dispatcher[{mode}]: {disp[mode].macs} MACs/image (cap {budget_macs:.0f} = 1/4 of "
            f"the cheapest model){cap}, width {disp[mode].arch.width}, downsample "
            f"{disp[mode].arch.downsample}, trained in {time.perf_counter() - t0:.1f}s, kept epoch "
            f"{h.get('epoch', 0)} (held-out acc {h.get('holdout_accuracy', float('nan')):.3f})")
    with torch.inference_mode():
        label_scores_test = None
        from router.dispatcher import dispatcher_scores
        label_scores_test = dispatcher_scores(disp["label"].net, inp.test_images, inp.info,
                                              "label").numpy()
        sample_scores_test = dispatcher_scores(disp["sample"].net, inp.test_images, inp.info,
                                               "sample").numpy()
    fits["dispatcher_label"]["test_label_accuracy"] = float(
        (label_scores_test.argmax(1) == test.labels).mean())
    cands = cascade_candidates(val, cvec, max_stages=cfg.cascade_max_stages, grid=cfg.cascade_grid,
                               reference=ref)
    fits["cascade_candidates"] = int(len(cands.accuracy))
    hold = disp["sample"].holdout_index
    hold_correct = val.correct[hold]
    hold_ref_acc = float(hold_correct[:, ref].mean())

    rows: list[dict[str, Any]] = []
    preds_out: dict[tuple[str, float], np.ndarray] = {}
    chosen_out: dict[tuple[str, float], np.ndarray] = {}
    rng = np.random.default_rng(cfg.seed)
    pending: list[tuple[dict[str, Any], Any]] = []     # rows whose timing is measured at the end

    def emit(method: str, family: str, s: float, chosen: np.ndarray,
             timed: tuple[ExecResult, Any] | None, *, expected_ms: float | None = None,
             router_macs: int = 0, routing_accuracy: float | None = None,
             val_accuracy: float | None = None, settings: dict | None = None,
             stages: Sequence[int] | None = None, random_of: bool = True) -> dict[str, Any]:
        rows_idx = np.arange(N)
        preds = test.preds[rows_idx, chosen]
        agree = None
        if timed is not None:
            res = timed[0]
            k = len(res.preds)
            agree = float((res.preds == preds[:k]).mean()) if k else None
            if k == N:
                preds = res.preds
        row: dict[str, Any] = {"method": method, "family": family, "sacrifice": s}
        row.update(classification_metrics(test.labels, preds, test.n_classes))
        share = np.bincount(chosen, minlength=M) / N
        model_macs = (cascade_cost(chosen, stages, inp.macs) if stages is not None
                      else float(share @ inp.macs))
        exp_ms = expected_ms if expected_ms is not None else (
            cascade_cost(chosen, stages, cvec) if stages is not None else float(share @ cvec))
        row.update({"budget_held": bool(row["accuracy"] >= ref_test_acc - s - _EPS),
                    "target_accuracy": ref_test_acc - s,
                    "accuracy_drop": ref_test_acc - row["accuracy"],
                    "macs_per_image": model_macs + router_macs, "router_macs": router_macs,
                    "routing_accuracy": routing_accuracy, "expected_ms_per_image": exp_ms,
                    "val_accuracy": val_accuracy, "agree_with_table": agree, "n_samples": N,
                    "settings": json.dumps(settings or {}, sort_keys=True)})
        if timed is not None:
            pending.append((row, timed[1]))
        if random_of:
            _, q = random_matched(chosen, exp_ms, cvec, ref, rng)
            r_acc = float(q @ acc_test)
            row["random_accuracy"] = r_acc
            gap = ceiling_acc - r_acc
            row["gap_recovered"] = (row["accuracy"] - r_acc) / gap if gap > _EPS else None
        for name, sh in zip(names, share):
            row[f"share_{name}"] = float(sh)
        rows.append(row)
        preds_out[(method, s)] = np.asarray(preds, dtype=np.int64)
        chosen_out[(method, s)] = chosen
        return row

    def emit_random(of: dict[str, Any], chosen: np.ndarray, s: float, exp_ms: float) -> None:
        assign, _ = random_matched(chosen, exp_ms, cvec, ref, rng)
        emit(f"random~{of['method']}", "random", s, assign, None, random_of=False,
             settings={"matched_to": of["method"], "expected_ms_per_image": exp_ms})

    # ---- singles (timed once, the same for every level) -------------------------------------
    singles = {}
    for m in tqdm(range(M), desc="time single models", disable=not cfg.progress, leave=False):
        singles[m] = timer.routed(("single", m), lambda sl, m=m: ConstantRouter(names, m))
    ceil_timed = timer.routed(("ceiling",), lambda sl: AssignmentRouter(
        names, ceiling_choice[sl], "per-sample-ceiling"))

    routers_dir = rd.root / "routers"
    saved: dict[str, str] = {}
    for s in tqdm(cfg.sacrifices, desc="levels", disable=not cfg.progress, leave=False):
        for m in range(M):
            emit(f"single:{names[m]}", "single", s, np.full(N, m, dtype=np.int64), singles[m],
                 val_accuracy=float(val.correct[:, m].mean()))
        emit(f"best-single:{names[ref]}", "best-single", s, np.full(N, ref, dtype=np.int64),
             singles[ref], val_accuracy=ref_val_acc)
        emit("ceiling", "ceiling", s, ceiling_choice, ceil_timed,
             settings={"deployable": False, "rule": "cheapest right model per sample"})
        emit("ceiling-budget", "ceiling", s,
             per_sample_choice(test, cvec, reference=ref, sacrifice=s), None,
             settings={"deployable": False, "rule": "least-cost per-sample assignment holding s"})
        policies = {}
        for kind in dict.fromkeys(list(cfg.oracle_kinds) + [cfg.label_policy]):
            pol = fit_policy(kind, val, cvec, s)
            policies[kind] = pol
            if kind not in cfg.oracle_kinds:
                continue
            l2m = _l2m(pol, test.n_classes)
            ch = l2m[test.labels]
            emit(f"oracle-{kind}", "oracle", s, ch, None, val_accuracy=pol.meta["val_accuracy"],
                 settings={"label_to_model": [names[i] for i in l2m], "simulated": True})
            timed = timer.routed(("labels", tuple(l2m)), lambda sl, l2m=l2m: LabelOracleRouter(
                names, l2m, test.labels[sl]))
            emit(f"oracle-{kind}-executed", "oracle-executed", s, ch, timed,
                 val_accuracy=pol.meta["val_accuracy"],
                 settings={"label_to_model": [names[i] for i in l2m], "deployable": False})

        deployable: list[tuple[dict[str, Any], np.ndarray, float]] = []
        # dispatcher, label mode: predicted label mapped through the oracle policy
        # (if the policy's expected cost on val plus the network's own is not below the
        # reference's, the dispatcher runs the reference alone and skips its network)
        pol = policies[cfg.label_policy]
        dl = Dispatcher.from_fit(disp["label"], cvec, policy=pol, fallback=ref)
        skip = pol.cost(cvec) + disp_ms["label"] >= cvec[ref] and dl.constant_choice is None
        if skip:
            dl = Dispatcher("label", dl.net, dl.info, names, cvec,
                            label_to_model=np.full(test.n_classes, ref), fallback=ref,
                            macs=dl.network_macs)
        ch = dl.choose(label_scores_test)
        target_route = pol.route(test.labels)
        timed = timer.routed(("disp-label", tuple(dl.label_to_model)), lambda sl, r=dl: r)
        row = emit("dispatcher-label", "dispatcher", s, ch, timed, router_macs=dl.macs_per_image,
                   routing_accuracy=float((ch == target_route).mean()),
                   expected_ms=_routed_ms(ch, cvec, dl, disp_ms["label"]),
                   settings={**dl.describe(), "policy": cfg.label_policy,
                             "network_skipped": dl.constant_choice is not None,
                             "skipped_because_not_cheaper": bool(skip)})
        deployable.append((row, ch, row["expected_ms_per_image"]))
        saved[f"dispatcher-label@{s:g}"] = _save(routers_dir, "dispatcher-label", s, dl, inp, cfg)
        # dispatcher, sample mode: cheapest model predicted right with chance >= tau
        tau, h_acc, _ = choose_threshold(disp["sample"].holdout_scores, hold_correct, cvec,
                                         hold_ref_acc - s, fallback=ref, z=cfg.margin_z,
                                         router_cost=disp_ms["sample"])
        ds = Dispatcher.from_fit(disp["sample"], cvec, threshold=tau, fallback=ref)
        ch = ds.choose(sample_scores_test)
        timed = timer.routed(("disp-sample", tau), lambda sl, r=ds: r)
        row = emit("dispatcher-sample", "dispatcher", s, ch, timed, router_macs=ds.macs_per_image,
                   routing_accuracy=float((ch == ceiling_choice).mean()), val_accuracy=h_acc,
                   expected_ms=_routed_ms(ch, cvec, ds, disp_ms["sample"]),
                   settings={**ds.describe(), "network_skipped": ds.constant_choice is not None})
        deployable.append((row, ch, row["expected_ms_per_image"]))
        saved[f"dispatcher-sample@{s:g}"] = _save(routers_dir, "dispatcher-sample", s, ds, inp, cfg)
        # cascade
        fit = select_cascade(cands, ref_val_acc - s, z=cfg.margin_z)
        casc = CascadeRouter.from_fit(fit)
        ch = simulate_cascade(test.confidence.astype(np.float16).astype(np.float32),
                              fit.stages, fit.thresholds)
        timed = timer.time(("cascade", tuple(fit.stages), tuple(fit.thresholds)),
                           lambda x, f=fit: execute_cascade(f.stages, f.thresholds, x, inp.models,
                                                            inp.infos, cfg.batch_size))
        row = emit("cascade", "cascade", s, ch, timed, stages=fit.stages,
                   val_accuracy=fit.val_accuracy,
                   settings={**casc.describe(), "val_stage_reach": fit.stage_reach,
                             "val_se": fit.val_se, "z": fit.z})
        deployable.append((row, ch, row["expected_ms_per_image"]))
        saved[f"cascade@{s:g}"] = _save(routers_dir, "cascade", s, casc, inp, cfg)
        for row, ch, exp_ms in deployable:
            emit_random(row, ch, s, exp_ms)

    # ---- timing: every distinct routing, round-robin, then the timed columns --------------
    log(f"  timing {len(timer.runs)} distinct routings round-robin: {cfg.repeats} rounds on "
        f"{timer.k} test images")
    timings = timer.measure()
    best_ips = timings[singles[ref][1]].images_per_second
    for row, key in pending:
        tm = timings[key]
        row.update({"seconds": tm.seconds, "images_per_second": tm.images_per_second,
                    "router_seconds": tm.router_seconds, "router_share": tm.router_share,
                    "timing_samples": tm.n_samples, "threads": tm.threads,
                    "repeats": tm.repeats, "speedup_vs_best": tm.images_per_second / best_ips})
    fits["seconds"] = time.perf_counter() - t_start
    fits["saved_routers"] = saved
    fits["threads"] = cfg.threads
    result = EvalResult(rows, preds_out, chosen_out, fits)
    result.paths = write_results(rd, result, names, test)
    log(format_summary(rows))
    log(f"wrote {result.paths['csv']} and {result.paths['npz']} in {fits['seconds']:.0f}s")
    return result


def _routed_ms(chosen: np.ndarray, cvec: np.ndarray, router: Dispatcher, net_ms: float) -> float:
    """Expected ms per image a dispatcher pays: its models plus its network when it runs it."""
    share = np.bincount(chosen, minlength=len(cvec)) / max(1, len(chosen))
    return float(share @ cvec) + (0.0 if router.constant_choice is not None else net_ms)


def _save(directory: Path, method: str, s: float, router: Router, inp: RunInputs,
          cfg: EvalConfig) -> str:
    if not cfg.save_routers:
        return ""
    clf = RoutedClassifier(f"{method}@{s:g}", router, inp.models, inp.infos, inp.checkpoints,
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
    arrays = {"methods": np.array([k[0] for k in keys]),
              "sacrifices": np.array([k[1] for k in keys], dtype=np.float64),
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
    """One line per method and level: accuracy, drop, images/s, speedup, budget, gap."""
    keep = [r for r in rows if r["family"] in ("best-single", "oracle-executed", "ceiling",
                                               "dispatcher", "cascade")
            and r.get("seconds") is not None]
    out = [f"{'sacrifice':>9} {'method':<26} {'acc':>7} {'drop':>7} {'img/s':>9} {'speedup':>8} "
           f"{'router%':>7} {'held':>5} {'gap':>6}"]
    for r in keep:
        gap = r.get("gap_recovered")
        out.append(f"{r['sacrifice']:>9g} {r['method']:<26} {r['accuracy']:>7.4f} "
                   f"{100 * r['accuracy_drop']:>6.2f}p {r['images_per_second']:>9.0f} "
                   f"{r.get('speedup_vs_best', float('nan')):>7.2f}x "
                   f"{100 * r.get('router_share', 0.0):>6.1f}% {str(r['budget_held']):>5} "
                   f"{'' if gap is None else f'{gap:.2f}':>6}")
    return "\n".join(out)
