"""evaluate-routers, part 2: score every fitted router of a zoo on the test split (numpy).

Decisions on test come from each router (dispatchers by running their network, cascades by
simulation at table precision); metrics come from the test table given those decisions.
Runs that must be timed are queued on a ``router.timing.RoutingTimer``; routers to save are
queued on ``ZooScorer.to_save`` (written by ``router.evaluate``).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import torch

from oracle.metrics import classification_metrics
from oracle.policy import per_sample_choice
from router.base import (AssignmentRouter, ConstantRouter, Router, RouterError, budget_margin_se,
                         gain_se)
from router.eval_config import EPS, EvalConfig
from router.execute import ExecResult
from router.fitting import ZooFit
from router.kind import RouterKind, TestView
from router.kind_dispatchers import label_to_model
from router.run_inputs import RunInputs
from router.timing import RoutingTimer


# ---- helpers ------------------------------------------------------------------------------

NOISE_Z = 1.96


NO_PROMISE = "no promise"


def budget_status(held: bool, margin_se: float | None, sacrifice: float = 0.0,
                  certified: bool | None = None) -> str:
    """"held" (test accuracy >= target), "within test noise" (missed by less than 1.96 paired
    test SEs: a 95 % two-sided test cannot tell it from held) or "violated"; "no promise" at a
    negative level where nothing was certified (``certified`` False): the reference answered
    and the output said no answer more accurate than it could be certified, so test has no
    promise to judge."""
    if sacrifice < 0 and certified is False:
        return NO_PROMISE
    if held:
        return "held"
    if margin_se is not None and margin_se >= -NOISE_Z:
        return "within test noise"
    return "violated"


def random_matched(target_ms: float, cvec: np.ndarray, val_acc: np.ndarray, n: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The cost-matched random router: (assignment (n,), model shares q (M,)).

    It mixes at random the two single models around ``target_ms`` on the upper hull of (cost,
    val accuracy): the best a router that ignores the image can do at that expected cost, by
    val. It does not copy any router's own shares, so a router that sends traffic to a weak
    model does not lower its own baseline. Below the cheapest model's cost it is that model;
    above the hull's last (most accurate) model, that model.
    """
    cvec = np.asarray(cvec, dtype=np.float64)
    hull = cost_accuracy_hull(cvec, np.asarray(val_acc, dtype=np.float64))
    q = np.zeros(len(cvec))
    costs = cvec[hull]
    if target_ms <= costs[0] + EPS:
        q[hull[0]] = 1.0
    elif target_ms >= costs[-1] - EPS:
        q[hull[-1]] = 1.0
    else:
        j = int(np.searchsorted(costs, target_ms))          # costs[j-1] < target <= costs[j]
        lam = (target_ms - costs[j - 1]) / (costs[j] - costs[j - 1])
        q[hull[j - 1]], q[hull[j]] = 1.0 - lam, lam
    counts = np.floor(q * n).astype(int)
    rest = n - counts.sum()
    if rest > 0:
        frac = q * n - counts
        counts[np.argsort(-frac, kind="stable")[:rest]] += 1
    assign = np.repeat(np.arange(len(cvec)), counts)
    rng.shuffle(assign)
    return assign.astype(np.int64), q


def cost_accuracy_hull(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the models on the upper concave hull of (cost, accuracy), cheapest first,
    from the cheapest model to the most accurate one (mixing two hull neighbours at random is
    the best cost-matched random router)."""
    order = np.lexsort((-accuracy, cost))
    pts: list[int] = []
    for i in order:
        if pts and accuracy[i] <= accuracy[pts[-1]] + EPS:
            continue                                        # dearer and not more accurate
        while len(pts) >= 2:
            a, b = pts[-2], pts[-1]
            # b lies on or below the chord a -> i: not on the upper hull
            if ((accuracy[b] - accuracy[a]) * (cost[i] - cost[a])
                    <= (accuracy[i] - accuracy[a]) * (cost[b] - cost[a]) + EPS):
                pts.pop()
            else:
                break
        pts.append(int(i))
    return np.asarray(pts, dtype=np.int64)


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


# ---- scoring on test (numpy) and the whole evaluation -------------------------------------

class ZooScorer:
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
        self.acc_val = self.val.accuracy()
        self.rows: list[dict[str, Any]] = []
        self.preds: dict[tuple[str, str, float], np.ndarray] = {}
        self.chosen: dict[tuple[str, str, float], np.ndarray] = {}
        self.pending: list[tuple[dict[str, Any], Any]] = []
        self.to_save: list[tuple[str, float, Router]] = []   # (method, sacrifice, router)

    def emit(self, method: str, family: str, s: float, chosen: np.ndarray,
             timed: tuple[ExecResult, Any] | None, *, expected_ms: float | None = None,
             router_macs: int = 0, routing_accuracy: float | None = None,
             val_accuracy: float | None = None, fit_ms: float | None = None,
             selected: bool = False, settings: dict | None = None,
             stages: Sequence[int] | None = None, random_of: bool = True,
             cert: Any = None, preds: np.ndarray | None = None) -> dict[str, Any]:
        test, zf, N = self.test, self.zf, self.test.n_samples
        if preds is None:                     # the chosen model's own answer
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
        held = bool(row["accuracy"] >= self.ref_test_acc - s - EPS)
        right, ref_right = preds == test.labels, test.correct[:, zf.ref]
        margin = budget_margin_se(right, ref_right, s)
        paired = gain_se(right, ref_right)
        certified = None if cert is None else bool(cert.certified)
        row.update({"selection": self.cfg.selection,
                    "delta": self.cfg.delta if self.cfg.selection == "certified" else None,
                    "certified": certified,
                    "certified_drop_ucb": None if cert is None else cert.drop_ucb,
                    "budget_status": budget_status(held, margin, s, certified)})
        row.update({"budget_held": held,
                    "target_accuracy": self.ref_test_acc - s,
                    "accuracy_drop": self.ref_test_acc - row["accuracy"],
                    "budget_margin_se": margin, "gain_se": paired,
                    "macs_per_image": model_macs + router_macs, "router_macs": router_macs,
                    "routing_accuracy": routing_accuracy, "expected_ms_per_image": exp_ms,
                    "fit_ms_per_image": fit_ms, "val_accuracy": val_accuracy,
                    "agree_with_table": agree, "n_samples": N,
                    "settings": json.dumps(settings or {}, sort_keys=True)})
        if timed is not None:
            self.pending.append((row, timed[1]))
        if random_of:
            _, q = random_matched(exp_ms, zf.cvec, self.acc_val, N, self.rng)
            r_acc = float(q @ self.acc_test)
            row["random_accuracy"] = r_acc
            gap = self.ceiling_acc - r_acc
            row["gap_recovered"] = (row["accuracy"] - r_acc) / gap if gap > EPS else None
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
        assign, _ = random_matched(exp_ms, self.zf.cvec, self.acc_val, len(chosen), self.rng)
        self.emit(f"random~{of['method']}", "random", s, assign, None, random_of=False,
                  settings={"matched_to": of["method"], "expected_ms_per_image": exp_ms})


def score_zoo(inp: RunInputs, zf: ZooFit, cfg: EvalConfig, timer: RoutingTimer,
              sc: ZooScorer) -> None:
    """All rows of one zoo at every level: decisions on test, timed runs queued on ``timer``,
    deployable routers queued on ``sc.to_save``."""
    test, names, idx, cvec, ref = sc.test, zf.names, zf.index, zf.cvec, zf.ref
    view = TestView(test, inp.test_images, inp.info)
    models = [inp.models[i] for i in idx]
    infos = [inp.infos[i] for i in idx]
    M, N = len(names), test.n_samples
    singles = {m: timer.routed(("single", int(idx[m])), idx[[m]],
                               lambda sl, m=m: ConstantRouter([names[m]], 0)) for m in range(M)}
    ceil_timed = timer.routed((zf.zoo, "ceiling"), idx, lambda sl: AssignmentRouter(
        names, sc.ceiling_choice[sl], "per-sample-ceiling"))
    val_acc = sc.val.accuracy()
    for lv in zf.levels:
        s = lv.sacrifice
        for m in range(M):
            sc.emit(f"single:{names[m]}", "single", s, np.full(N, m, dtype=np.int64), singles[m],
                    val_accuracy=float(val_acc[m]), fit_ms=float(cvec[m]),
                    selected=lv.selected == f"single:{names[m]}",
                    cert=lv.certificates.get(f"single:{names[m]}"))
        sc.emit(f"best-single:{names[ref]}", "best-single", s, np.full(N, ref, dtype=np.int64),
                singles[ref], val_accuracy=zf.ref_val_acc, fit_ms=float(cvec[ref]))
        cs = lv.cheapest_single
        sc.emit(f"cheapest-single:{names[cs]}", "cheapest-single", s,
                np.full(N, cs, dtype=np.int64), singles[cs], val_accuracy=float(val_acc[cs]),
                fit_ms=float(cvec[cs]), selected=lv.selected == "cheapest-single",
                cert=lv.certificates.get("cheapest-single"),
                settings={"model": names[cs], "rule": (
                    "cheapest model whose val accuracy minus "
                    f"{cfg.margin_z:g} paired SE meets the target" if cfg.selection == "estimate"
                    else f"cheapest model certified at risk {cfg.delta:g} on the single-model "
                         "path")})
        sc.emit("ceiling", "ceiling", s, sc.ceiling_choice, ceil_timed,
                settings={"deployable": False, "rule": "cheapest right model per sample"})
        sc.emit("ceiling-budget", "ceiling", s,
                per_sample_choice(test, cvec, reference=ref, sacrifice=max(s, 0.0)), None,
                settings={"deployable": False, "rule": "least-cost per-sample assignment holding s"})
        for kind in cfg.oracle_kinds:
            pol = lv.policies[kind]
            l2m = label_to_model(pol, test.n_classes)
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
        for name, kind in lv.kinds.items():
            row, ch = score_kind(kind, lv, sc, view, models, infos, timer, cfg)
            deployable.append((row, ch, row["expected_ms_per_image"]))
            sc.to_save.append((name, s, kind.router_))
        for row, ch, exp_ms in deployable:
            sc.emit_random(row, ch, s, exp_ms)


def score_kind(kind: RouterKind, lv: Any, sc: ZooScorer, view: TestView,
               models: Sequence[torch.nn.Module], infos: Sequence[Any], timer: RoutingTimer,
               cfg: EvalConfig) -> tuple[dict[str, Any], np.ndarray]:
    """One kind's row at one level: its choices on test, its executed run queued for timing."""
    zf, s = sc.zf, lv.sacrifice
    ch = kind.simulate(view)
    c = lv.candidates[kind.name]
    timed = timer.time((zf.zoo, *kind.timing_key()),
                       lambda x, k=kind: k.run(x, models, infos, cfg.batch_size))
    row = sc.emit(kind.name, kind.family, s, ch, timed, preds=kind.predictions(view, ch),
                  stages=kind.stages(),
                  router_macs=kind.router_macs(),
                  routing_accuracy=kind.routing_accuracy(ch, view, sc.ceiling_choice,
                                                         lv.policies),
                  expected_ms=kind.expected_ms(ch), val_accuracy=c.val_accuracy,
                  fit_ms=c.fit_ms_per_image, selected=lv.selected == kind.name,
                  cert=lv.certificates.get(kind.name), settings=kind.settings())
    return row, ch
