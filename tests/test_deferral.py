"""router.deferral: deferral features and heads, the learned cascade's fit, execution, artifact."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from common.tables import PredictionTable
from router.artifact import RoutedClassifier
from router.base import RouterError, table_precision
from router.cascade import CascadeRouter, cascade_candidates, fit_cascade
from router.deferral import DeferralHead, LearnedCascadeRouter, deferral_features, head_scores, \
    learned_candidates, select_learned
from router.execute import execute_cascade
from zoo.checkpoint import save_checkpoint
from tests.test_router import INFO, linear_models
from zoo.data import DatasetInfo, normalize

INFO28 = DatasetInfo("crafted", 4, 1, 28, ["q0", "q1", "q2", "q3"], [0.3], [0.35])


def images(n: int, seed: int = 1, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)


def own_table(models: list[nn.Module], x: torch.Tensor, info: DatasetInfo,
              labels: np.ndarray | None = None) -> PredictionTable:
    """The models' own prediction table on ``x`` (probabilities stored as float16, as
    profile-zoo stores them); labels default to the last model's answers (always right)."""
    with torch.no_grad():
        logits = torch.stack([m(normalize(x, info)) for m in models], 1)     # (N, M, C)
    preds = logits.argmax(2).numpy()
    probs = torch.softmax(logits, 2).numpy().astype(np.float16)
    labels = preds[:, -1] if labels is None else labels
    return PredictionTable([f"m{i}" for i in range(len(models))], labels, preds, probs,
                           np.arange(len(x)), "val")


def crafted_table(n: int, seed: int = 0, classes: int = 6) -> PredictionTable:
    """Cheap model 0 is right exactly when it predicts a class in {0, 1, 2}; its confidence
    (0.5, 0.7 or 0.9) is spread alike over right and wrong answers, so no max-softmax
    threshold separates them. Model 1 (dear) is always right."""
    rng = np.random.default_rng(seed)
    pred = np.arange(n) % classes
    conf = np.array([0.5, 0.7, 0.9])[(np.arange(n) // classes) % 3]
    order = rng.permutation(n)
    pred, conf = pred[order], conf[order]
    labels = np.where(pred <= 2, pred, (pred + 1) % classes)
    probs = np.zeros((n, 2, classes), dtype=np.float32)
    probs[:, 0] = ((1 - conf) / (classes - 1))[:, None]
    probs[np.arange(n), 0, pred] = conf
    probs[np.arange(n), 1, labels] = 1.0
    return PredictionTable(["cheap", "dear"], labels, np.stack([pred, labels], 1), probs,
                           np.arange(n), "val")


# ---- features and the head -----------------------------------------------------------------

def test_features_by_hand():
    p = np.array([[0.5, 0.3, 0.2, 0.0]], dtype=np.float32)
    f = deferral_features(p)
    q = table_precision(p)[0].astype(np.float64)
    ent = -sum(v * np.log(v) for v in q if v > 0) / np.log(4)
    assert f.shape == (1, 2 * 4 + 3)
    np.testing.assert_allclose(f[0, :4], q)
    assert f[0, 4] == q[0] and f[0, 5] == pytest.approx(q[0] - q[1])
    assert f[0, 6] == pytest.approx(ent)
    assert f[0, 7:].tolist() == [1.0, 0.0, 0.0, 0.0]
    # a uniform vector has entropy 1 and margin 0; a one-hot one entropy 0
    u = deferral_features(np.full((1, 4), 0.25))
    assert u[0, 5] == 0.0 and u[0, 6] == pytest.approx(1.0)
    assert deferral_features(np.eye(4)[[2]])[0, 6] == 0.0
    with pytest.raises(RouterError, match="C >= 2"):
        deferral_features(np.ones((3, 1)))


def test_head_learns_a_class_rule_that_max_softmax_cannot_see():
    t = crafted_table(600)
    head = DeferralHead().fit(t.probs[:, 0], t.correct[:, 0])
    s = head.score(t.probs[:, 0])
    right = t.correct[:, 0]
    assert s.dtype == np.float32 and ((0 <= s) & (s <= 1)).all()
    assert s[right].min() > s[~right].max()              # the rule, exactly
    # confidences alone do not separate right from wrong: same levels on both sides
    assert set(t.confidence[right, 0]) == set(t.confidence[~right, 0])
    # a model that is always right: a constant head (no second class to fit)
    const = DeferralHead().fit(t.probs[:, 1], t.correct[:, 1])
    assert np.ptp(const.score(t.probs[:, 1])) == 0 and const.score(t.probs[:1, 1])[0] > 0.99
    with pytest.raises(RouterError, match="fitted on 6 classes"):
        head.score(np.ones((2, 4)) / 4)


def test_learned_cascade_defers_exactly_the_wrong_half():
    """Full accuracy: the max-softmax cascade must send everything to the dear model (cost 10);
    the learned one keeps the cheap model's classes 0-2 and defers the rest (1 + 10 x their
    share), on the fit data and on fresh data alike."""
    t = crafted_table(600)
    costs = np.array([1.0, 10.0])
    plain = fit_cascade(t, costs, target=1.0)
    assert plain.stages == [1] and plain.val_cost == 10.0
    lc = learned_candidates(t, costs, folds=0, fit_share=0.5, seed=0)
    assert len(lc.fit_index) == len(lc.threshold_index) == 300
    assert not set(lc.fit_index) & set(lc.threshold_index)
    assert lc.reference == 1 and lc.reference_accuracy == 1.0
    for z in (0.0, 1.0):                                  # SE 0: it never disagrees with dear
        fit = select_learned(lc, 0.0, z=z)
        wrong_share = float((t.preds[lc.threshold_index, 0] > 2).mean())
        assert fit.cascade.stages == [0, 1] and fit.val_accuracy == 1.0
        assert fit.val_cost == pytest.approx(1.0 + 10.0 * wrong_share) and fit.val_cost < 7
        assert fit.target == 1.0 and fit.fit_samples == fit.threshold_samples == 300
    router = LearnedCascadeRouter.from_fit(fit)
    fresh = crafted_table(300, seed=7)
    chosen = router.simulate(fresh.probs)
    assert (chosen == np.where(fresh.preds[:, 0] <= 2, 0, 1)).all()
    assert fresh.correct[np.arange(300), chosen].all() and (chosen == 1).mean() == 0.5
    # at a loose target the cheap model alone suffices (accuracy about 1/2)
    assert select_learned(lc, 0.6).cascade.stages == [0]


def test_cross_fitted_cascade_learns_the_rule_on_out_of_fold_scores():
    """Cross-fitted (the default): every val sample is scored by a head that did not see it,
    thresholds are chosen on all of val, the deployed heads are fitted on all of val; the
    crafted rule (cheap model right exactly on classes 0-2) is learned all the same."""
    t = crafted_table(600)
    costs = np.array([1.0, 10.0])
    lc = learned_candidates(t, costs, seed=0)
    assert lc.folds == 5 and len(lc.fit_index) == len(lc.threshold_index) == 600
    assert lc.reference_accuracy == 1.0
    fit = select_learned(lc, 0.0, z=1.0)
    wrong_share = float((t.preds[:, 0] > 2).mean())
    assert fit.cascade.stages == [0, 1] and fit.val_accuracy == 1.0
    assert fit.val_cost == pytest.approx(1.0 + 10.0 * wrong_share)
    fresh = crafted_table(300, seed=7)
    chosen = LearnedCascadeRouter.from_fit(fit).simulate(fresh.probs)
    assert (chosen == np.where(fresh.preds[:, 0] <= 2, 0, 1)).all()
    # out-of-fold: scrambling which rows the folds hold changes no deployed head
    other = learned_candidates(t, costs, seed=1)
    np.testing.assert_array_equal(other.heads[0].coef_, lc.heads[0].coef_)
    with pytest.raises(RouterError, match="folds"):
        learned_candidates(t, costs, folds=1)


def test_fit_split_is_seeded():
    t = crafted_table(120)
    a = learned_candidates(t, np.array([1.0, 10.0]), folds=0, seed=3)
    b = learned_candidates(t, np.array([1.0, 10.0]), folds=0, seed=3)
    c = learned_candidates(t, np.array([1.0, 10.0]), folds=0, seed=4)
    assert (a.fit_index == b.fit_index).all() and (a.fit_index != c.fit_index).any()
    np.testing.assert_array_equal(a.heads[0].coef_, b.heads[0].coef_)
    np.testing.assert_array_equal(a.cands.accuracy, b.cands.accuracy)
    with pytest.raises(RouterError, match="fit_share"):
        learned_candidates(t, np.array([1.0, 10.0]), folds=0, fit_share=1.0)


def test_candidate_search_checks_the_scores_shape():
    t = crafted_table(60)
    with pytest.raises(RouterError, match="scores has shape"):
        cascade_candidates(t, np.array([1.0, 10.0]), scores=np.zeros((60, 3)))


# ---- execution ---------------------------------------------------------------------------

def test_executed_learned_cascade_equals_its_simulation_on_the_table():
    models = linear_models(3, seed=3)
    x = images(300, seed=4)
    table = own_table(models, x, INFO)
    heads = [DeferralHead().fit(table.probs[:, m], table.correct[:, m]) for m in range(2)]
    scores = head_scores(heads, table.probs[:, :2])
    th = [float(np.median(scores[:, 0])), float(np.median(scores[:, 1])), 0.0]
    router = LearnedCascadeRouter(table.model_names, [0, 1, 2], th, heads)
    sim = router.simulate(table.probs)
    assert 0 < (sim == 0).sum() < 300 and (sim == 1).sum() > 0 and (sim == 2).sum() > 0
    res = router.attach(models, [INFO] * 3, batch_size=16).run(x)
    assert (res.chosen == sim).all()
    assert (res.preds == table.preds[np.arange(300), sim]).all()
    # the executed stage scores are the heads' scores on the table, where a stage was reached
    reached = ~np.isnan(res.stage_confidence[:, 0])
    assert reached.all()
    np.testing.assert_array_equal(res.stage_confidence[:, 0], scores[:, 0])
    assert np.isnan(res.stage_confidence[sim == 0, 1:]).all()
    # and a fit selected on this table executes as it was simulated
    lc = learned_candidates(table, np.array([1.0, 2.0, 4.0]), seed=0)
    fitted = LearnedCascadeRouter.from_fit(select_learned(lc, 0.2, z=0.0))
    out = fitted.attach(models, [INFO] * 3, batch_size=32).run(x)
    assert (out.chosen == fitted.simulate(table.probs)).all()


def test_scorer_time_is_router_time():
    models = linear_models(2)
    x = images(40)

    def slow(probs: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return probs.max(1)
    res = execute_cascade([0, 1], [0.5, 0.0], x, models, [INFO] * 2, scorers=[slow, None])
    assert res.router_seconds >= 0.05 and res.model_seconds < res.seconds - 0.05
    with pytest.raises(RouterError, match="one scorer"):
        execute_cascade([0, 1], [0.5, 0.0], x, models, [INFO] * 2, scorers=[slow])
    with pytest.raises(RouterError, match="one head per stage"):
        LearnedCascadeRouter(["a", "b"], [0, 1], [0.5, 0.0], [])


# ---- artifact ----------------------------------------------------------------------------

def test_artifact_round_trip(tmp_path):
    models, ckpts = [], []
    for i in range(3):
        torch.manual_seed(i)
        m = zoo.create_model(f"tiny_vgg{i + 1}", num_classes=4, in_channels=1, input_size=28,
                             width=0.25).eval()
        ckpts.append(save_checkpoint(tmp_path / "zoo" / f"m{i}" / "checkpoint.pt",
                                     model_name=f"m{i}", arch=m.arch.to_dict(),
                                     state_dict=m.state_dict(), data=INFO28.to_dict()))
        models.append(m)
    x = images(60, seed=2, size=28)
    table = own_table(models, x, INFO28, labels=np.arange(60) % 4)
    head = DeferralHead().fit(table.probs[:, 0], table.correct[:, 0])
    th = float(np.median(head.score(table.probs[:, 0])))
    router = LearnedCascadeRouter(table.model_names, [0, 2], [th, 0.0], [head])
    clf = RoutedClassifier("learned-cascade", router, models, [INFO28] * 3, ckpts)
    out = clf(x)
    assert 0 < (out.chosen == 0).sum() < 60
    assert out.score_names == ["p_right:m0", "confidence:m2"] and "deferral head" in out.rule
    path = clf.save(tmp_path / "routers" / "learned-cascade.pt")
    saved = torch.load(path, weights_only=True)            # plain containers, nothing pickled
    assert saved["kind"] == "learned-cascade"
    back = RoutedClassifier.load(path)
    assert isinstance(back.router, LearnedCascadeRouter) and back.models[1] is None
    assert back.router.describe() == router.describe()
    again = back(x.numpy())
    assert (again.preds == out.preds).all() and (again.chosen == out.chosen).all()
    np.testing.assert_array_equal(again.scores, out.scores)
    np.testing.assert_array_equal(back.router.heads[0].coef_, head.coef_)
    # the page shows it as a group of its own beside the plain cascade, with its stage table
    from router.web.routed import LoadedRouter
    page = LoadedRouter("learned-cascade-s0", "cascade", back)
    assert page.group == "learned-cascade"
    plain = RoutedClassifier("cascade", CascadeRouter(table.model_names, [0, 2], [0.5, 0.0]),
                             models, [INFO28] * 3, ckpts)
    assert LoadedRouter("cascade-s0", "cascade", plain).group == "cascade"
    why = page.verdict(x[0], {}, None).why
    assert [r["model"] for r in why] == ["m0", "m2"] and why[0]["threshold"] == pytest.approx(th)


def test_deferral_curve_by_hand():
    # 4 inputs; the first model is wrong on inputs 1 and 3, the reference right everywhere
    fc = np.array([True, False, True, False])
    rc = np.array([True, True, True, True])
    from router.deferral import deferral_curve
    ideal = deferral_curve(fc.astype(float), fc, rc, shares=[0, 0.25, 0.5, 0.75, 1.0])
    assert ideal.tolist() == [0.5, 0.75, 1.0, 1.0, 1.0]
    # a score that ranks both right inputs lowest wastes the first two deferrals
    worst = deferral_curve(np.array([0.0, 0.5, 0.1, 0.9]), fc, rc,
                           shares=[0, 0.25, 0.5, 0.75, 1.0])
    assert worst.tolist() == [0.5, 0.5, 0.5, 0.75, 1.0]
