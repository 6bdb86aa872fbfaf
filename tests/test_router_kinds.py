"""The router kind table: a kind defined in this file alone, registered with one line, is
fitted, scored, selected, saved, loaded, served and drawn by the same code as every other kind.

The toy kind routes by brightness: images whose mean pixel is at least a threshold go to the
cheapest model, the others to the reference. It is deliberately naive; what is tested is that
nothing outside this file has to know about it.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import pytest
import torch

from common.io import read_csv
from router.base import Router, RouterError, accuracy_lower_bound, least_cost_meeting, paired_se
from router.certify import PoolEntry
from router.kind import KindStyle, RouterKind, TestView, candidate
from router.kinds import ROUTER_KINDS, kind_named, kind_of
from router.selection import Candidate
from tests.conftest import make_fake_idx_dataset
from tests.router_run import make_router_run
from zoo.data import DatasetInfo


class BrightnessRouter(Router):
    """Bright images (mean pixel >= threshold) to ``cheap``, the rest to ``reference``."""

    def __init__(self, model_names: list[str], cheap: int, reference: int, threshold: float):
        self.model_names = list(model_names)
        self.cheap, self.reference, self.threshold = int(cheap), int(reference), float(threshold)

    def route(self, images: torch.Tensor) -> np.ndarray:
        return np.where(brightness(images) >= self.threshold, self.cheap, self.reference)

    def describe(self) -> dict[str, Any]:
        return {"type": "toy-brightness", "threshold": self.threshold,
                "cheap": self.model_names[self.cheap]}


def brightness(images: torch.Tensor) -> np.ndarray:
    return images.float().mean(dim=(1, 2, 3)).numpy()


class BrightnessKind(RouterKind):
    name = "toy-brightness"
    family = "toy"
    style = KindStyle("gold", "*", 7.0)
    simplicity = -1           # simpler than a single model: wins every tie (see the test)
    router_types = (BrightnessRouter,)
    needs_images = True

    def prepare(self):
        ctx = self.ctx
        cheap = int(np.argmin(ctx.cvec))
        b = brightness(ctx.images)
        taus = np.unique(np.concatenate([np.quantile(b, np.linspace(0, 1, 9)), [np.inf]]))
        rows = np.arange(ctx.val.n_samples)
        right = np.stack([ctx.val.correct[rows, np.where(b >= t, cheap, ctx.ref)] for t in taus])
        cost = np.array([np.mean(np.where(b >= t, ctx.cvec[cheap], ctx.cvec[ctx.ref]))
                         for t in taus])
        return cheap, taus, right, cost

    def _router(self, tau: float) -> BrightnessRouter:
        return BrightnessRouter(self.ctx.names, self.prepared()[0], self.ctx.ref, tau)

    def fit(self, sacrifice: float, target: float) -> "BrightnessKind":
        _, taus, right, cost = self.prepared()
        bound = accuracy_lower_bound(right, self.ctx.val.correct[:, self.ctx.ref],
                                     self.ctx.settings.margin_z)
        i = least_cost_meeting(bound, cost, target)
        self.router_ = self._router(float(taus[i]))
        self.candidate_ = candidate(self, right[i].mean(), cost[i], True)
        return self

    def path_entries(self, sacrifice: float) -> list[PoolEntry]:
        _, taus, right, cost = self.prepared()
        r = self.ctx.val.correct[:, self.ctx.ref]
        se = paired_se((right & ~r).sum(1), (~right & r).sum(1), len(r))
        return [PoolEntry(self.name, self._router(float(t)), float(c), r.mean() - a.mean(),
                          float(e), len(r))
                for t, a, c, e in zip(taus, right, cost, se) if np.isfinite(t)]

    def correct_on_certify(self, entry: PoolEntry) -> np.ndarray:
        val_c = self.ctx.certify
        return val_c.correct[np.arange(val_c.n_samples),
                             entry.key.route(self.ctx.certify_images)]

    def fit_entry(self, entry: PoolEntry | None, sacrifice: float,
                  cand: Candidate) -> "BrightnessKind":
        self.router_ = entry.key if entry is not None else self._router(float("inf"))
        self.candidate_ = cand
        return self

    def simulate(self, test: TestView) -> np.ndarray:
        return self.router_.route(test.images)

    @classmethod
    def state(cls, router: Router) -> dict[str, Any]:
        return {"cheap": router.cheap, "reference": router.reference,
                "threshold": router.threshold}

    @classmethod
    def from_state(cls, state: dict[str, Any], model_names: list[str],
                   info: DatasetInfo | None) -> Router:
        return BrightnessRouter(model_names, state["cheap"], state["reference"],
                                state["threshold"])

    @classmethod
    def needed_models(cls, router: Router, n_models: int) -> set[int]:
        return {router.cheap, router.reference}

    @classmethod
    def why(cls, router: Router, scores: np.ndarray, score_names: Sequence[str]
            ) -> list[dict[str, Any]]:
        return [{"rule": f"mean pixel >= {router.threshold:g}"}]


@pytest.fixture()
def kinds_table():
    """The kind table, restored (entries and their order) after the test."""
    saved = dict(ROUTER_KINDS)
    yield ROUTER_KINDS
    ROUTER_KINDS.clear()
    ROUTER_KINDS.update(saved)


@pytest.fixture(scope="module")
def router_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    data = make_fake_idx_dataset(root / "data", n_train=1000, n_test=200)
    return make_router_run(root / "run", data, {"tiny_vgg1": 1, "tiny_vgg2": 2, "tiny_vgg3": 4})


def test_a_kind_defined_in_a_test_goes_through_the_whole_pipeline(router_run, tmp_path,
                                                                  kinds_table):
    import shutil
    from reports import style
    from reports.build import build_report
    from router.artifact import RoutedClassifier
    from router.web import TimingConfig, WebService, create_app
    from scripts.evaluate_routers import main as evaluate
    run = tmp_path / "run"
    shutil.copytree(router_run, run)
    # the one registry line a new kind needs
    kinds_table[BrightnessKind.name] = BrightnessKind
    # the dispatchers' estimates come from 25 held-out images here, where a margin cannot hold
    # them: for this test the table holds the toy and the two cascades
    del kinds_table["dispatcher-label"], kinds_table["dispatcher-sample"]
    # estimate rule with a margin so wide that only answers equal to the reference's qualify:
    # every kind ties at the reference's cost, and the toy (simplicity -1) wins the tie
    assert evaluate(["--run", str(run), "--sacrifices", "0", "0.05", "--selection", "estimate",
                     "--margin-z", "50", "--threads", "1", "--repeats", "1",
                     "--dispatcher-epochs", "2", "--timing-samples", "50",
                     "--no-progress"]) == 0
    rows = [r for r in read_csv(run / "results" / "routers.csv") if r["zoo"] == "all"]
    toy = [r for r in rows if r["method"] == "toy-brightness"]
    assert len(toy) == 2 and all(r["family"] == "toy" for r in toy)            # fitted, scored
    assert all(json.loads(r["settings"])["type"] == "toy-brightness" for r in toy)
    assert all(float(r["images_per_second"]) > 0 for r in toy)                 # executed, timed
    assert any(r["method"] == "random~toy-brightness" for r in rows)           # its baseline
    at0 = [r for r in rows if float(r["sacrifice"]) == 0 and int(r["selected"])]
    assert [r["method"] for r in at0] == ["toy-brightness"]                    # selected
    fits = json.loads((run / "routers" / "fits.json").read_text())
    assert fits["selected"]["0"] == "toy-brightness"
    # saved and loaded: the artifact rebuilds the toy router and answers like the row
    path = run / "routers" / "toy-brightness-s0.pt"
    clf = RoutedClassifier.load(path)
    assert isinstance(clf.router, BrightnessRouter) and kind_of(clf.router) is BrightnessKind
    out = clf(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))
    assert len(out.preds) == 4 and set(out.chosen_names) <= set(clf.model_names)
    # served: the page loads every artifact, the toy's in its own family, and explains it
    service = WebService.load(run, TimingConfig(repeats=1, threads=1))
    groups = {r.group for r in service.strip.routers}
    assert "toy-brightness" in groups
    d = create_app(service).test_client().get("/api/predict?sample=0").get_json()
    entry = [e for e in d["routers"] if e["family"] == "toy"]
    assert entry and entry[0]["status"] == "ok"
    # drawn: the run records the kind's style, the report uses it
    kinds = json.loads((run / "results" / "router_kinds.json").read_text())["kinds"]
    assert {"name": "toy-brightness", "family": "toy", "color": "gold"}.items() <= \
        [k for k in kinds if k["name"] == "toy-brightness"][0].items()
    build_report(run)
    assert style.method_colors(["toy-brightness"])["toy-brightness"] == "gold"
    assert "toy" in style.deployable_families()
    data = "".join(p.read_text() for p in (run / "reports").rglob("*.csv"))
    assert "toy-brightness" in data


def test_unknown_kinds_and_foreign_routers_are_refused():
    with pytest.raises(RouterError, match="unknown router kind 'nope'"):
        kind_named("nope")
    with pytest.raises(RouterError, match="not a router of any registered kind"):
        kind_of(BrightnessRouter(["a", "b"], 0, 1, 0.5))         # not registered here
    assert kind_named("cascade").family == "cascade"
    assert [k.name for k in ROUTER_KINDS.values()] == [
        "dispatcher-label", "dispatcher-sample", "cascade", "learned-cascade",
        "committee-cascade"]


def test_evaluate_routers_fits_only_the_kinds_asked_for(router_run, tmp_path):
    import shutil
    from router.eval_config import EvalConfig
    from scripts.evaluate_routers import main as evaluate
    with pytest.raises(RouterError, match=r"unknown router kinds \['casc'\]"):
        EvalConfig(kinds=["casc"])
    run = tmp_path / "run"
    shutil.copytree(router_run, run)
    assert evaluate(["--run", str(run), "--sacrifices", "0.05", "--kinds", "cascade",
                     "--threads", "1", "--repeats", "1", "--timing-samples", "20",
                     "--no-progress", "--no-save-routers"]) == 0
    families = {r["family"] for r in read_csv(run / "results" / "routers.csv")}
    assert "cascade" in families and not families & {"dispatcher", "learned", "committee"}
    fits = json.loads((run / "routers" / "fits.json").read_text())
    assert fits["kinds"] == ["cascade"] and "dispatcher_label" not in fits
