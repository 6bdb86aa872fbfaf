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

from common.io import write_csv, write_json
from common.tables import PredictionTable
from router.artifact import RoutedClassifier
from router.base import Router, RouterError
from router.deferral import DeferralHead, deferral_curve_rows, head_ms_per_image
from router.eval_config import DEFAULT_SACRIFICES, LEAD_COLUMNS, ZOOS, EvalConfig
from router.execute import model_ms_per_image, stage_overhead_ms
from router.fitting import LevelFit, ZooFit, fit_zoo
from router.kinds import kind_named, kind_records
from router.run_inputs import RunInputs, images_for_table, load_run_inputs, zoo_indices
from router.scoring import LabelOracleRouter, ZooScorer, cascade_cost, random_matched, score_zoo
from router.timing import RoutingTimer, fill_timings
from zoo.rundir import RunDir

__all__ = ["DEFAULT_SACRIFICES", "LEAD_COLUMNS", "ZOOS", "EvalConfig", "EvalResult",
           "LabelOracleRouter", "LevelFit", "RunInputs", "ZooFit", "cascade_cost",
           "evaluate_run", "fit_zoo", "fill_timings", "format_summary", "images_for_table",
           "load_run_inputs", "random_matched", "write_policies", "write_results", "zoo_indices"]


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    preds: dict[tuple[str, str, float], np.ndarray]   # (zoo, method, sacrifice) -> (N,) preds
    chosen: dict[tuple[str, str, float], np.ndarray]  # ... -> (N,) run-wide model indices
    fits: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


def evaluate_run(run: str | Path, config: EvalConfig | None = None,
                 inputs: RunInputs | None = None, log: Callable[[str], None] = print) -> EvalResult:
    """Fit on val, score and time on test; write routers.csv, router_predictions.npz,
    routers/ and policies/ (see the module docstring)."""
    cfg = config or EvalConfig()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    inp = inputs or load_run_inputs(run, progress=cfg.progress, device=cfg.device)
    names_all = inp.test.model_names
    cvec_all, overhead, source = fit_costs(inp, cfg)
    archs = pinned_dispatchers(cfg.costs_from) if cfg.costs_from else {}
    kinds = None if cfg.kinds is None else [kind_named(k) for k in cfg.kinds]
    zoos = zoo_indices(inp, cfg.zoos)
    used = sorted(set(inp.devices)) or ["cpu"]
    device_note = used[0] if len(used) == 1 else "; ".join(
        f"{d}: {sum(x == d for x in inp.devices)} models" for d in used)
    timer = RoutingTimer(inp.test_images, inp.models, inp.infos, cfg)
    rd = RunDir(inp.root)
    log(f"evaluate-routers: {len(names_all)} models, {inp.val.n_samples} val / "
        f"{inp.test.n_samples} test images, zoos {', '.join(f'{z} ({len(i)})' for z, i in zoos.items())}, "
        f"threads {cfg.threads}, models on {device_note}, timing on {timer.k} test images x {cfg.repeats} interleaved "
        f"repeats after {cfg.warmup} warm-up")
    log("  costs (" + source + ", ms/image): "
        + ", ".join(f"{n} {c:.3f}" for n, c in zip(names_all, cvec_all)))
    fits: dict[str, Any] = {"costs": cfg.costs, "margin_z": cfg.margin_z,
                            "selection": cfg.selection, "delta": cfg.delta,
                            "router_overhead_ms": overhead,
                            "ms_per_image": dict(zip(names_all, map(float, cvec_all))),
                            "profile_ms_per_image": dict(zip(names_all, map(float, inp.cvec))),
                            "zoos": {}, "saved_routers": {}}
    rng = np.random.default_rng(cfg.seed)
    scorers: list[ZooScorer] = []
    zoo_fits: list[ZooFit] = []
    for zoo, idx in zoos.items():
        # the fit sees the validation split and nothing else
        zf = fit_zoo(zoo, idx, inp.val.select_models([names_all[i] for i in idx]),
                     inp.val_images, inp.info, cvec_all[idx], inp.macs[idx], cfg, log, overhead,
                     dispatcher_archs=archs.get(zoo), kinds=kinds)
        zoo_fits.append(zf)
        fits["zoos"][zoo] = zf.record
        if zoo == "all":
            fits.update(zf.record)
        scorers.append(ZooScorer(inp, zf, cfg, rng))
        score_zoo(inp, zf, cfg, timer, scorers[-1])
        fits["saved_routers"].update(save_routers(inp, zf, scorers[-1], cfg))
    policy_paths = write_policies(rd, zoo_fits)
    write_deferral_curves(rd, zoo_fits, inp.test)
    log(f"  timing {len(timer.runs)} distinct routings round-robin: {cfg.repeats} rounds on "
        f"{timer.k} test images")
    result = timed_result(scorers, timer.measure(), device_note, fits)
    fits.update(seconds=time.perf_counter() - t_start, threads=cfg.threads,
                policies=[str(p) for p in policy_paths])
    result.paths = write_results(rd, result, names_all, inp.test)
    log(format_summary(result.rows))
    log(f"wrote {result.paths['csv']} and {result.paths['npz']} in {fits['seconds']:.0f}s")
    return result


def fit_costs(inp: RunInputs, cfg: EvalConfig) -> tuple[np.ndarray, dict[str, float], str]:
    """(ms per image of every model, each stage's routing overheads, where they came from):
    pinned from ``cfg.costs_from``, measured here (the default: on val images, with the
    threads, batch size and executor the routers run with; costs.json was timed by another
    process at another time, and on a shared machine its figures can be off several-fold) or
    read from costs.json."""
    names = inp.test.model_names
    if cfg.costs_from:
        cvec, overhead = pinned_costs(cfg.costs_from, names)
        return cvec, overhead if cfg.count_router_time else {}, f"pinned from {cfg.costs_from}"
    if cfg.costs == "measured":
        k = min(cfg.cost_samples, inp.val.n_samples)
        cvec = model_ms_per_image(inp.models, inp.infos, inp.val_images[:k], cfg.batch_size,
                                  warmup=cfg.warmup, rounds=max(3, cfg.repeats))
        source = f"measured here on {k} val images"
    else:
        cvec, source = inp.cvec, "costs.json"
    overhead = ({"stage_ms": stage_overhead_ms(inp.val_images[:1024], inp.val.n_classes),
                 "head_ms": head_ms_per_image(inp.val.n_classes)}
                if cfg.count_router_time else {})
    return cvec, overhead, source


def save_routers(inp: RunInputs, zf: ZooFit, sc: ZooScorer, cfg: EvalConfig) -> dict[str, str]:
    """Every deployable router the scorer queued, as ``RUN/routers[/<zoo>]/<method>-s<s>.pt``
    with its certificate; returns ``{"[zoo/]method@s": path}``."""
    routers_dir = inp.root / "routers" / zf.zoo if zf.zoo != "all" else inp.root / "routers"
    tag = "" if zf.zoo == "all" else f"{zf.zoo}/"
    certs = {(lv.sacrifice, m): c for lv in zf.levels for m, c in lv.certificates.items()}
    return {f"{tag}{method}@{s:g}": _save(routers_dir, method, s, router, inp, cfg, zf.index,
                                          certs.get((s, method)))
            for method, s, router in sc.to_save}


def timed_result(scorers: Sequence[ZooScorer], timings: dict[Any, Any], device_note: str,
                 fits: dict[str, Any]) -> EvalResult:
    """Every zoo's rows with their timed columns filled from the one round-robin measurement."""
    rows: list[dict[str, Any]] = []
    preds_out: dict[tuple[str, str, float], np.ndarray] = {}
    chosen_out: dict[tuple[str, str, float], np.ndarray] = {}
    for sc in scorers:
        fill_timings(sc.rows, sc.pending, timings)
        for row in sc.rows:
            if row.get("seconds") is not None:
                row["device"] = device_note
        rows += sc.rows
        preds_out.update(sc.preds)
        chosen_out.update(sc.chosen)
    return EvalResult(rows, preds_out, chosen_out, fits)


def pinned_costs(path: str | Path, names: Sequence[str]) -> tuple[np.ndarray, dict[str, float]]:
    """The ms/image and routing overheads a previous evaluate-routers measured (its
    ``RUN/routers/fits.json``), so that a second fit on the same tables sees the same costs and
    so makes the same choices (how a refactoring is checked to move no selection)."""
    p = Path(path)
    if not p.is_file():
        raise RouterError(f"--costs-from {p}: no such file; pass the fits.json a previous "
                          f"evaluate-routers wrote (RUN/routers/fits.json)")
    rec = json.loads(p.read_text())
    ms = rec.get("ms_per_image", {})
    missing = [n for n in names if n not in ms]
    if missing:
        raise RouterError(f"--costs-from {p}: no measured cost for {missing}; it was written for "
                          f"another zoo. Drop the flag to measure the costs here")
    return (np.asarray([float(ms[n]) for n in names], dtype=np.float64),
            {k: float(v) for k, v in rec.get("router_overhead_ms", {}).items()})


def pinned_dispatchers(path: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """zoo -> mode -> {"arch", "ms_per_image"}: the dispatcher architecture a previous
    evaluate-routers chose and its network's measured time (its fits.json). Both depend on the
    machine's load (the search runs under a time cap; the time enters every candidate's cost),
    so a refit that must repeat its choices reuses them."""
    rec = json.loads(Path(path).read_text())
    return {zoo: {mode: {k: z[f"dispatcher_{mode}"][k] for k in ("arch", "ms_per_image")
                         if k in z[f"dispatcher_{mode}"]}
                  for mode in ("label", "sample") if "arch" in z.get(f"dispatcher_{mode}", {})}
            for zoo, z in rec.get("zoos", {}).items()}


def write_deferral_curves(rd: RunDir, zoo_fits: Sequence[ZooFit],
                          test: PredictionTable) -> Path:
    """``RUN/results/deferral_curves.csv``: per zoo, the cheapest model's deferral to the
    reference ranked by max-softmax, by its learned deferral head (fitted on val) and ideally,
    as test accuracy against the deferred share (``router.deferral.deferral_curve``): whether
    the learned score ranks the cheap model's mistakes any better, apart from thresholds."""
    rows: list[dict[str, Any]] = []
    for zf in zoo_fits:
        first = int(np.argmin(zf.cvec))
        if first == zf.ref:
            continue
        heads = zf.record.get("learned_cascade", {}).get("heads", {})
        if zf.names[first] not in heads:
            continue
        head = DeferralHead.from_state(heads[zf.names[first]])
        rows += deferral_curve_rows(test.select_models(zf.names), first, zf.ref, head, zf.zoo)
    return write_csv(rd.results / "deferral_curves.csv", rows,
                     ["zoo", "first", "reference", "score", "deferred_share", "accuracy"])


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


def _save(directory: Path, method: str, s: float, router: Router, inp: RunInputs,
          cfg: EvalConfig, index: np.ndarray, cert: Any = None) -> str:
    if not cfg.save_routers:
        return ""
    meta = {"sacrifice": s, "method": method, "settings": router.describe(),
            "selection": cfg.selection}
    if cert is not None:                 # certified selection: the promise travels with it
        meta.update(certificate=cert.to_dict(),
                    statement=cert.statement())
    clf = RoutedClassifier(f"{method}@{s:g}", router, [inp.models[i] for i in index],
                           [inp.infos[i] for i in index], [inp.checkpoints[i] for i in index],
                           cfg.batch_size, meta=meta)
    return str(clf.save(directory / f"{method}-s{s:g}.pt", run_root=inp.root,
                        embed=cfg.embed_models))


def write_results(rd: RunDir, result: EvalResult, names: list[str],
                  test: PredictionTable) -> dict[str, Path]:
    """RUN/results/routers.csv, RUN/results/router_predictions.npz, RUN/routers/fits.json."""
    from common.io import atomic_write
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
    # what the reports need of each router kind (name, family, colour, marker): they read it
    # from the run, as they read every figure's data
    kinds_path = write_json(rd.results / "router_kinds.json", {"kinds": kind_records()})
    return {"csv": csv_path, "npz": npz_path, "fits": fits_path, "kinds": kinds_path}


def format_summary(rows: list[dict[str, Any]]) -> str:
    """One line per method, zoo and level: accuracy, drop, images/s, both speedups, overhead
    share, budget, gap; ``*`` marks the answer selected on val."""
    keep = [r for r in rows if (r["family"] in ("best-single", "cheapest-single",
                                                "oracle-executed", "ceiling", "dispatcher",
                                                "cascade", "learned") or r.get("selected"))
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
