"""The committee cascade: the agreement rule by hand, live execution against the table
simulation, negative levels, and the kind through evaluate-routers and its artifact."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.io import read_csv
from common.tables import PredictionTable
from router.certified import certify_context, certify_level
from router.kind import KindSettings
from router.kind_cascade import CascadeKind
from router.kind_committee import NEVER, CommitteeCascadeKind, CommitteeCascadeRouter, \
    committee_stages, execute_committee, simulate_committee
from tests.conftest import make_fake_idx_dataset
from tests.router_run import make_router_run

# 3 inputs, 2 models, 3 classes; every value exact in float16 (tables store float16)
PROBS = np.array([
    [[0.75, 0.125, 0.125], [0.5, 0.25, 0.25]],     # both vote 0: mean .625/.1875/.1875
    [[0.5, 0.375, 0.125], [0.125, 0.75, 0.125]],   # votes 0 and 1: mean .3125/.5625/.125
    [[0.25, 0.25, 0.5], [0.125, 0.25, 0.625]],     # both vote 2: mean .1875/.25/.5625
], dtype=np.float32)


def test_agreement_rule_by_hand():
    scores, answers = committee_stages(PROBS)
    # stage 1 is one model: it always agrees with itself, its score is its confidence; stage 2
    # scores the mean probability of the committee's answer where both members voted for it
    assert scores.tolist() == [[0.75, 0.625], [0.5, NEVER], [0.5, 0.5625]]
    assert answers.tolist() == [[0, 0], [0, 1], [2, 2]]
    # with half the committee enough, input 1's stage 2 agrees (one of two votes for class 1)
    half, _ = committee_stages(PROBS, agreement=0.5)
    assert half[1].tolist() == [0.5, 0.5625]
    # thresholds [0.6, -]: input 0 stops at stage 1 (0.75 >= 0.6) with model 0's answer; inputs
    # 1 and 2 go on and get the committee's answer (1 and 2), though model 1 alone says 1 and 2
    # too; the answer of a stage is the committee's, not its last model's
    chosen, preds = simulate_committee(PROBS, [0, 1], [0.6, 0.0])
    assert chosen.tolist() == [0, 1, 1] and preds.tolist() == [0, 1, 2]
    # where the committee and its last member disagree, the committee answers
    p = np.array([[[0.0625, 0.9375, 0.0], [0.5, 0.375, 0.125]]], dtype=np.float32)
    assert simulate_committee(p, [0, 1], [2.0, 0.0])[1].tolist() == [1]   # mean .28/.66/.06


def test_committee_router_refuses_a_bad_agreement():
    with pytest.raises(ValueError, match="agreement is a share"):
        CommitteeCascadeRouter(["a", "b"], [0, 1], [0.5, 0.0], agreement=0.0)


@pytest.fixture(scope="module")
def router_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("committee")
    data = make_fake_idx_dataset(root / "data", n_train=1000, n_test=200)
    return make_router_run(root / "run", data, {"tiny_vgg1": 1, "tiny_vgg2": 2, "tiny_vgg3": 4})


def test_live_committee_equals_the_table_simulation(router_run):
    from router.run_inputs import load_run_inputs
    inp = load_run_inputs(router_run, progress=False)
    chain = [0, 1, 2]
    scores, _ = committee_stages(inp.test.probs[:, chain].astype(np.float32))
    # stage 1 at its median score; stage 2 at the lowest score of an input that reaches it and
    # whose committee agrees: some inputs stop at each stage, the disagreeing ones go on
    th1 = float(np.median(scores[:, 0]))
    reach = (scores[:, 0] < th1) & (scores[:, 1] > NEVER)
    th = [th1, float(scores[reach, 1].min()), 0.0]
    chosen, preds = simulate_committee(inp.test.probs, chain, th)
    assert len(set(chosen.tolist())) == 3
    res = execute_committee(chain, th, inp.test_images, inp.models, inp.infos, batch_size=64)
    assert (res.preds == preds).all() and (res.chosen == chosen).all()
    assert res.model_seconds > 0 and res.stage_confidence.shape == (len(preds), 3)


def _table(n: int, seed: int = 0) -> PredictionTable:
    """Three models whose mistakes are independent: m0, m1 right 85 % of the time, m2 (the
    reference, dearest) 88 %; a wrong model puts 0.6 on one wrong class and 0.3 on the true
    one, a right one 0.6 on the true class. The committee of all three is right wherever two
    are, about 94 %: more accurate than the reference."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    right = rng.random((n, 3)) < np.array([0.85, 0.85, 0.88])
    wrong = (labels[:, None] + rng.integers(1, 10, (n, 3))) % 10
    preds = np.where(right, labels[:, None], wrong)
    probs = np.full((n, 3, 10), 0.1 / 8, dtype=np.float32)
    rows, cols = np.meshgrid(np.arange(n), np.arange(3), indexing="ij")
    probs[rows, cols, preds] = 0.6
    probs[rows, cols, labels[:, None].repeat(3, 1)] = np.where(right, 0.6, 0.3)
    return PredictionTable(["m0", "m1", "m2"], labels, preds, probs.astype(np.float16),
                           np.arange(n), "val")


def test_a_negative_level_selects_only_answers_that_clear_the_reference():
    val = _table(6000)
    cvec = np.array([1.0, 2.0, 8.0])
    ctx = certify_context("t", val, cvec, 2, KindSettings(max_stages=3, grid=6, seed=0),
                          select_share=0.3)
    ref_c = ctx.certify.correct[:, 2].mean()
    for s in (-0.01, -0.02):
        lv = certify_level(ctx, s, 0.1, [CascadeKind, CommitteeCascadeKind])
        sel = lv.selected
        assert sel == "committee-cascade" and lv.certificates[sel].certified
        # its accuracy on the certify part clears the reference's by more than the margin
        assert lv.candidates[sel].val_accuracy >= ref_c - s
        assert lv.certificates[sel].drop_ucb <= s
    # a gain far beyond what the committee gives is certified for nothing: the reference stays
    far = certify_level(ctx, -0.15, 0.1, [CascadeKind, CommitteeCascadeKind])
    assert far.selected == "single:m2" and not far.certificates["single:m2"].certified


def test_committee_grid_sets_the_committee_cascade_s_own_thresholds():
    # three models in cost order: chains m0-m1, m0-m2, m1-m2 (one threshold each), m0-m1-m2
    # (two) and the three chains of one; each stage's thresholds are its select-part scores'
    # quantiles (plus 0 and never), so count the candidates per chain from the grid itself
    from router.base import table_precision
    from router.cascade import threshold_grid
    from router.kind_committee import committee_stages
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.3), (600, 3)).astype(np.float16)
    labels = rng.integers(0, 10, 600)
    val = PredictionTable(["m0", "m1", "m2"], labels, probs.argmax(axis=2), probs,
                          np.arange(600), "val")
    cvec = np.array([1.0, 2.0, 8.0])

    def expected(table: PredictionTable, grid: int) -> int:
        probs = table_precision(table.probs)
        total = 3
        for chain in ([0, 1], [0, 2], [1, 2], [0, 1, 2]):
            scores, _ = committee_stages(probs[:, chain])
            total += int(np.prod([len(threshold_grid(scores[:, j], grid, table=False))
                                  for j in range(len(chain) - 1)]))
        return total
    counts = []
    for grid in (2, 6):
        ctx = certify_context("t", val, cvec, 2, KindSettings(max_stages=3, grid=24,
                                                               committee_grid=grid, seed=0),
                              select_share=0.5)
        CommitteeCascadeKind(ctx).prepared()
        counts.append(ctx.record["committee_cascade"]["candidates"])
        assert counts[-1] == expected(ctx.val, grid)
    assert counts[0] < counts[1]


def test_committee_kind_through_evaluate_routers_and_its_artifact(router_run, tmp_path):
    import shutil
    from router.artifact import RoutedClassifier
    from scripts.evaluate_routers import main as evaluate
    run = tmp_path / "run"
    shutil.copytree(router_run, run)
    assert evaluate(["--run", str(run), "--sacrifices", "0", "0.05", "--threads", "1",
                     "--repeats", "1", "--dispatcher-epochs", "2", "--timing-samples", "0",
                     "--no-progress"]) == 0
    rows = [r for r in read_csv(run / "results" / "routers.csv")
            if r["method"] == "committee-cascade"]
    assert len(rows) == 2 and all(r["family"] == "committee" for r in rows)
    for r in rows:                           # executed on every test image: same answers
        assert float(r["agree_with_table"]) == 1.0
        assert json.loads(r["settings"])["type"] == "committee-cascade"
    clf = RoutedClassifier.load(run / "routers" / "committee-cascade-s0.05.pt")
    assert isinstance(clf.router, CommitteeCascadeRouter)
    out = clf(torch.zeros(3, 1, 28, 28, dtype=torch.uint8))
    assert out.scores.shape == (3, len(clf.router.stages)) and "agrees" in out.rule
