"""router: the threshold rule, grouped and cascade execution, cascade fit, dispatcher, artifact."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from common.tables import PredictionTable
from router.artifact import RoutedClassifier
from router.base import AssignmentRouter, ConstantRouter, RouterError, first_confident, \
    least_cost_meeting, table_precision
from router.cascade import CascadeRouter, fit_cascade, simulate_cascade
from router.dispatcher import Dispatcher, DispatcherConfig, arch_within_budget, \
    choose_threshold, dispatcher_macs, fit_dispatcher
from router.execute import benchmark, execute_cascade, execute_routed
from zoo.checkpoint import save_checkpoint
from zoo.data import DatasetInfo, normalize

INFO = DatasetInfo("synthetic", num_classes=4, in_channels=1, input_size=8,
                   classes=["a", "b", "c", "d"], mean=[0.5], std=[0.25])


def linear_models(n: int, seed: int = 0) -> list[nn.Module]:
    """Random linear classifiers with well-separated logits (no argmax near-ties)."""
    g = torch.Generator().manual_seed(seed)
    models = []
    for _ in range(n):
        lin = nn.Linear(64, 4)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(4, 64, generator=g))
            lin.bias.copy_(torch.randn(4, generator=g))
        models.append(nn.Sequential(nn.Flatten(), lin).eval())
    return models


def images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


# ---- the shared threshold rule -------------------------------------------------------------

def test_first_confident_by_hand():
    scores = np.array([[0.9, 0.1, 0.2],
                       [0.2, 0.8, 0.9],
                       [0.1, 0.1, 0.1],
                       [np.nan, 0.6, 0.0]])
    assert first_confident(scores, 0.5, fallback=2).tolist() == [0, 1, 2, 1]
    # per-column thresholds, and a custom order (column 2 considered first)
    assert first_confident(scores, [0.95, 0.5, 0.5], fallback=0).tolist() == [0, 1, 0, 1]
    assert first_confident(scores, 0.5, fallback=0, order=[2, 1, 0]).tolist() == [0, 2, 0, 1]
    assert first_confident(scores, 0.0, fallback=2).tolist() == [0, 0, 0, 1]  # NaN never clears


def test_least_cost_meeting_by_hand():
    acc = np.array([0.80, 0.90, 0.90, 0.95])
    cost = np.array([1.0, 2.0, 2.0, 5.0])
    assert least_cost_meeting(acc, cost, 0.85) == 1      # tie in cost and accuracy -> first
    assert least_cost_meeting(acc, cost, 0.80) == 0
    assert least_cost_meeting(acc, cost, 0.95) == 3
    with pytest.raises(RouterError, match="no candidate"):
        least_cost_meeting(acc, cost, 0.99)


def test_table_precision_is_monotone_float16():
    x = np.array([0.99971, 0.5, 1.0], dtype=np.float32)
    y = table_precision(x)
    assert y[0] == np.float32(np.float16(0.99971)) and y[1] == 0.5 and y[2] == 1.0


# ---- execution ---------------------------------------------------------------------------

def test_grouped_execution_equals_per_sample_and_keeps_order():
    models = linear_models(3)
    x = images(50)
    chosen = np.random.default_rng(0).integers(0, 3, 50)
    res = execute_routed(AssignmentRouter(["a", "b", "c"], chosen), x, models, [INFO] * 3,
                         batch_size=7)
    with torch.no_grad():
        one_by_one = [int(models[c](normalize(x[i:i + 1], INFO)).argmax()) for i, c in
                      enumerate(chosen)]
    assert res.chosen.tolist() == chosen.tolist()
    assert res.preds.tolist() == one_by_one
    assert res.model_seconds > 0 and res.seconds >= res.model_seconds


def test_execution_rejects_wrong_model_count():
    with pytest.raises(RouterError, match="model order"):
        execute_routed(ConstantRouter(["a", "b"], 0), images(3), linear_models(1), [INFO])


def test_cascade_threshold_zero_is_first_model_and_above_one_is_last():
    models = linear_models(3)
    x = images(40)
    with torch.no_grad():
        own = [m(normalize(x, INFO)).argmax(1).numpy() for m in models]
    first = execute_cascade([0, 1, 2], [0.0, 0.0, 0.0], x, models, [INFO] * 3)
    assert (first.chosen == 0).all() and (first.preds == own[0]).all()
    last = execute_cascade([0, 1, 2], [1.01, 1.01, 0.0], x, models, [INFO] * 3)
    assert (last.chosen == 2).all() and (last.preds == own[2]).all()
    # the stage confidences say why: every input reached every stage
    assert not np.isnan(last.stage_confidence).any()


def test_executed_cascade_matches_simulation_on_its_own_table():
    models = linear_models(3, seed=3)
    x = images(200, seed=4)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(normalize(x, INFO)), 1) for m in models], 1)
    conf = table_precision(probs.max(2).values)
    th = [float(np.median(conf[:, 0])), float(np.median(conf[:, 1])), 0.0]
    sim = simulate_cascade(conf, [0, 1, 2], th)
    res = execute_cascade([0, 1, 2], th, x, models, [INFO] * 3, batch_size=16)
    assert (res.chosen == sim).all()
    assert 0 < (sim == 0).sum() < 200 and (sim == 2).sum() > 0
    # an input that stopped early was never run by later stages
    assert np.isnan(res.stage_confidence[sim == 0, 1:]).all()


def test_benchmark_records_median_threads_and_repeats():
    models = linear_models(2)
    x = images(30)
    torch.set_num_threads(1)
    res, t = benchmark(lambda: execute_routed(ConstantRouter(["a", "b"], 1), x, models,
                                              [INFO] * 2), len(x), warmup=1, repeats=3)
    assert t.threads == 1 and t.repeats == 3 and len(t.all_seconds) == 3
    assert t.seconds == sorted(t.all_seconds)[1]
    assert t.images_per_second == pytest.approx(30 / t.seconds)
    assert (res.chosen == 1).all()


# ---- cascade fit -----------------------------------------------------------------------------

def hand_table() -> PredictionTable:
    """Cheap model 0 is right exactly when it is confident (0.9), else wrong (0.4); model 1
    (10x the cost) is always right. Labels all 0, 4 samples."""
    labels = np.zeros(4, dtype=np.int64)
    preds = np.array([[0, 0], [0, 0], [1, 0], [1, 0]])
    probs = np.zeros((4, 2, 2), dtype=np.float16)
    for n, c in enumerate([0.9, 0.9, 0.4, 0.4]):
        probs[n, 0] = [c, 1 - c] if preds[n, 0] == 0 else [1 - c, c]
    probs[:, 1] = [1.0, 0.0]
    return PredictionTable(["cheap", "dear"], labels, preds, probs, np.arange(4), "val")


def test_fit_cascade_by_hand():
    t = hand_table()
    costs = np.array([1.0, 10.0])
    fit = fit_cascade(t, costs, target=1.0)
    # cheap on all, dear on the unsure half: 1 + 0.5 * 10 = 6 < 10 (dear alone)
    assert fit.stages == [0, 1] and fit.val_accuracy == 1.0
    assert fit.val_cost == pytest.approx(6.0)
    assert 0.6 < fit.thresholds[0] <= float(np.float16(0.9))
    assert fit_cascade(t, costs, target=0.5).stages == [0]          # cheap alone is enough
    with pytest.raises(RouterError, match="no cascade"):
        fit_cascade(t, costs, target=1.01)


# ---- dispatcher --------------------------------------------------------------------------

def crafted(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """28x28 images whose routing rule is visible: class k lights quadrant k."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    x = rng.integers(0, 40, (n, 1, 28, 28))
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 2)
        x[i, 0, 14 * r:14 * r + 14, 14 * c:14 * c + 14] += 180
    return torch.from_numpy(x.clip(0, 255).astype(np.uint8)), labels


def crafted_table(labels: np.ndarray) -> PredictionTable:
    """Model 0 (cheap) is right on classes 0-1 only, model 1 on 0-2, model 2 on all."""
    n = len(labels)
    right = np.stack([labels <= 1, labels <= 2, np.ones(n, bool)], 1)
    preds = np.where(right, labels[:, None], (labels[:, None] + 1) % 4)
    probs = np.zeros((n, 3, 4), dtype=np.float16)
    probs[np.arange(n)[:, None], np.arange(3)[None], preds] = 1.0
    return PredictionTable(["m0", "m1", "m2"], labels, preds, probs, np.arange(n), "val")


INFO28 = DatasetInfo("crafted", 4, 1, 28, ["q0", "q1", "q2", "q3"], [0.3], [0.35])


def test_dispatcher_learns_a_crafted_routing_rule():
    torch.manual_seed(0)
    x, y = crafted(400, seed=0)
    table = crafted_table(y)
    costs = np.array([1.0, 2.0, 4.0])
    cfg = DispatcherConfig(epochs=8, batch_size=32, lr=5e-3, patience=8, progress=False)
    x_new, y_new = crafted(200, seed=1)
    want = np.where(y_new <= 1, 0, np.where(y_new == 2, 1, 2))   # cheapest right model
    # sample mode: predicted correctness -> cheapest model predicted right
    fit = fit_dispatcher("sample", x, table, INFO28, max_macs=2e6, config=cfg)
    assert fit.macs <= 2e6 and fit.macs == dispatcher_macs(fit.arch)
    tau, acc, cost = choose_threshold(fit.holdout_scores, table.correct[fit.holdout_index],
                                      costs, target=1.0, fallback=2)
    d = Dispatcher.from_fit(fit, costs, threshold=tau, fallback=2)
    got = d.route(x_new)
    assert (got == want).mean() >= 0.9 and acc == 1.0
    # label mode: predicted label mapped through a label->model table
    from oracle.policy import fit_policy
    fit_l = fit_dispatcher("label", x, table, INFO28, max_macs=2e6, config=cfg)
    pol = fit_policy("accuracy", table, costs, 0.0)
    dl = Dispatcher.from_fit(fit_l, costs, policy=pol, fallback=2)
    assert dl.label_to_model.tolist() == [0, 0, 1, 2]
    assert (dl.route(x_new) == want).mean() >= 0.9
    why = dl.explain(x_new[:3])
    assert why.scores.shape == (3, 4) and why.score_names[0] == "p_label:q0"


def test_dispatcher_respects_the_mac_cap():
    arch = arch_within_budget(1, 28, 10, max_macs=1e5)
    assert dispatcher_macs(arch) <= 1e5
    with pytest.raises(RouterError, match="no dispatcher fits"):
        arch_within_budget(1, 28, 10, max_macs=10)


# ---- artifact ----------------------------------------------------------------------------

def saved_models(tmp_path, n: int = 3):
    """Width-0.25 tiny VGGs saved as checkpoints in a run-like folder."""
    models, ckpts = [], []
    for i in range(n):
        torch.manual_seed(i)
        m = zoo.create_model(f"tiny_vgg{i + 1}", num_classes=4, in_channels=1, input_size=28,
                             width=0.25).eval()
        p = save_checkpoint(tmp_path / "zoo" / f"m{i}" / "checkpoint.pt", model_name=f"m{i}",
                            arch=m.arch.to_dict(), state_dict=m.state_dict(),
                            data=INFO28.to_dict())
        models.append(m)
        ckpts.append(p)
    return models, ckpts


def test_artifact_round_trip_dispatcher_and_cascade(tmp_path):
    models, ckpts = saved_models(tmp_path)
    names = ["m0", "m1", "m2"]
    x, y = crafted(60, seed=2)
    table = crafted_table(y)
    fit = fit_dispatcher("sample", x, table, INFO28, max_macs=1e6,
                         config=DispatcherConfig(epochs=1, progress=False))
    routers = {"dispatcher": Dispatcher.from_fit(fit, np.array([1.0, 2.0, 4.0]), threshold=0.5,
                                                 fallback=2),
               "cascade": CascadeRouter(names, [0, 2], [0.1, 0.0])}
    for kind, r in routers.items():
        clf = RoutedClassifier(kind, r, models, [INFO28] * 3, ckpts)
        out = clf(x)
        path = clf.save(tmp_path / "routers" / f"{kind}.pt")
        torch.load(path, weights_only=True)                  # plain tensors and containers
        back = RoutedClassifier.load(path)
        again = back(x.numpy())
        assert (again.preds == out.preds).all() and (again.chosen == out.chosen).all()
        np.testing.assert_allclose(again.confidence, out.confidence, rtol=1e-6)
        assert again.scores.shape == out.scores.shape and again.rule == out.rule
        assert len(again.chosen_names) == 60
    with pytest.raises(RouterError, match="uint8"):
        back(x.float())
    # a changed checkpoint is refused
    save_checkpoint(ckpts[2], model_name="m2", arch=models[0].arch.to_dict(),
                    state_dict=models[0].state_dict(), data=INFO28.to_dict())
    with pytest.raises(ValueError, match="changed since the router was saved"):
        RoutedClassifier.load(tmp_path / "routers" / "cascade.pt")


def test_embedded_artifact_loads_without_the_run(tmp_path):
    """embed=True copies the chosen models in: the file alone rebuilds the classifier."""
    import shutil
    run = tmp_path / "run"
    models, ckpts = saved_models(run)
    x, _ = crafted(40, seed=5)
    clf = RoutedClassifier("cascade", CascadeRouter(["m0", "m1", "m2"], [0, 2], [0.3, 0.0]),
                           models, [INFO28] * 3, ckpts)
    out = clf(x)
    path = clf.save(tmp_path / "alone.pt", run_root=run, embed=True)
    shutil.rmtree(run)                                   # no checkpoint left on disk
    back = RoutedClassifier.load(path)
    assert back.models[1] is None                        # never chosen by stages [0, 2]
    again = back(x)
    assert (again.preds == out.preds).all() and (again.chosen == out.chosen).all()
    # re-saving a loaded embedded classifier keeps the weights inside
    back.save(tmp_path / "copy.pt")
    assert (RoutedClassifier.load(tmp_path / "copy.pt")(x).preds == out.preds).all()


def test_load_with_a_model_provider_uses_its_models(tmp_path):
    """model_provider hands over models already loaded (a server's): the artifact calls those
    very objects, checksums still checked (each file read once with a shared cache), and a
    model the provider does not have is refused with the provider's error."""
    models, ckpts = saved_models(tmp_path)
    x, _ = crafted(40, seed=5)
    clf = RoutedClassifier("cascade", CascadeRouter(["m0", "m1", "m2"], [0, 2], [0.3, 0.0]),
                           models, [INFO28] * 3, ckpts)
    out = clf(x)
    path = clf.save(tmp_path / "routers" / "cascade.pt")
    held = {p.resolve(): m for p, m in zip(ckpts, models)}
    asked = []

    def provider(name, checkpoint):
        asked.append(name)
        return held[checkpoint], None          # None: the artifact's DatasetInfo
    sums = {}
    back = RoutedClassifier.load(path, model_provider=provider, checksums=sums)
    assert asked == ["m0", "m2"] and set(sums) == {ckpts[0].resolve(), ckpts[2].resolve()}
    assert back.models[0] is models[0] and back.models[2] is models[2] and back.models[1] is None
    assert (back(x).preds == out.preds).all()

    def refuses(name, checkpoint):
        raise ValueError(f"no {name} here")
    with pytest.raises(ValueError, match="no m0 here"):
        RoutedClassifier.load(path, model_provider=refuses)
    save_checkpoint(ckpts[2], model_name="m2", arch=models[0].arch.to_dict(),
                    state_dict=models[0].state_dict(), data=INFO28.to_dict())
    with pytest.raises(ValueError, match="changed since the router was saved"):
        RoutedClassifier.load(path, model_provider=provider)


# ---- selection margin and measured costs ----------------------------------------------------

def test_paired_se_and_lower_bound_by_hand():
    from router.base import accuracy_lower_bound, paired_se
    # 4 samples: d = [-1, -1, 0, 0] -> mean -0.5, sample var = (0.5 - 0.25) * 4/3 = 1/3
    assert paired_se(0, 2, 4) == pytest.approx(np.sqrt(1 / 3 / 4))
    assert paired_se(0, 0, 4) == 0.0                      # always agrees with the reference
    ref = np.array([1, 1, 1, 1], bool)
    cand = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    lb = accuracy_lower_bound(cand, ref, z=1.0)
    assert lb[0] == pytest.approx(0.5 - np.sqrt(1 / 12)) and lb[1] == 1.0
    assert accuracy_lower_bound(cand, ref, z=0.0).tolist() == [0.5, 1.0]


def test_fit_cascade_margin_by_hand():
    t = hand_table()
    costs = np.array([1.0, 10.0])
    # cheap alone: accuracy 0.5, bound 0.5 - 0.289 = 0.211 < 0.5 -> escalate with the margin
    assert fit_cascade(t, costs, target=0.5).stages == [0]
    fit = fit_cascade(t, costs, target=0.5, z=1.0)
    assert fit.stages == [0, 1] and fit.val_se == 0.0 and fit.z == 1.0
    assert fit.val_cost == pytest.approx(6.0)
    # a target the bound of cheap alone meets
    assert fit_cascade(t, costs, target=0.2, z=1.0).stages == [0]


def test_choose_threshold_margin_by_hand():
    # model 0 cheap, model 1 the reference (always right); model 0 right on 3 of 4 samples
    correct = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], bool)
    scores = np.array([[0.9, 1.0], [0.8, 1.0], [0.7, 1.0], [0.6, 1.0]], np.float32)
    costs = np.array([1.0, 4.0])
    tau, acc, cost = choose_threshold(scores, correct, costs, target=0.75, fallback=1)
    assert acc == 0.75 and cost == 1.0                    # everything to the cheap model
    tau, acc, cost = choose_threshold(scores, correct, costs, target=0.75, fallback=1, z=1.0)
    assert acc == 1.0 and tau == pytest.approx(np.float16(0.7))  # the unsure one escalates


def test_measured_costs_rank_models_by_work():
    from router.execute import measure_ms_per_image, model_ms_per_image
    torch.set_num_threads(1)
    x = images(256)
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    big = nn.Sequential(nn.Flatten(), nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048),
                        nn.ReLU(), nn.Linear(2048, 4)).eval()
    ms = model_ms_per_image([small, big], [INFO, INFO], x, batch_size=64, rounds=3)
    assert ms.shape == (2,) and 0 < ms[0] < ms[1]
    with pytest.raises(RouterError, match="rounds"):
        measure_ms_per_image([lambda: None], 1, rounds=0)


def test_dispatcher_time_cap_picks_a_faster_arch():
    from router.dispatcher import dispatcher_ms_per_image
    torch.set_num_threads(1)
    x = torch.randn(256, 1, 28, 28)
    free = arch_within_budget(1, 28, 10, max_macs=2e6)
    free_ms = dispatcher_ms_per_image(free, x)
    capped = arch_within_budget(1, 28, 10, max_macs=2e6, max_ms=free_ms / 4, time_images=x)
    assert dispatcher_macs(capped) < dispatcher_macs(free)
    with pytest.raises(RouterError, match="time_images"):
        arch_within_budget(1, 28, 10, max_macs=2e6, max_ms=1.0)


def test_benchmark_interleaved_runs_round_robin():
    from router.execute import ExecResult, benchmark_interleaved
    calls = []

    def make(k):
        def run():
            calls.append(k)
            return ExecResult(np.zeros(3, np.int64), np.zeros(3, np.int64), 1.0, 0.75)
        return run
    t = benchmark_interleaved({"a": make("a"), "b": make("b")}, 3, warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4                      # one warm-up round, three timed rounds
    assert set(t) == {"a", "b"} and len(t["a"].all_seconds) == 3
    assert t["a"].seconds == sorted(t["a"].all_seconds)[1]
    assert t["b"].router_seconds == pytest.approx(0.25) and t["b"].warmup == 1


def test_dispatcher_not_cheaper_than_the_reference_skips_its_network():
    correct = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], bool)
    scores = np.array([[0.9, 1.0], [0.8, 1.0], [0.7, 1.0], [0.6, 1.0]], np.float32)
    costs = np.array([1.0, 4.0])
    # target 0.8: the cheap model alone (0.75) fails; tau 0.7 sends the unsure sample to the
    # reference: models cost (1 + 1 + 1 + 4) / 4 = 1.75. With a network of 2: 3.75 < 4
    tau, acc, cost = choose_threshold(scores, correct, costs, 0.8, fallback=1, router_cost=2.0)
    assert tau == pytest.approx(np.float16(0.7)) and cost == 3.75
    # the network costs 5: 6.75 > 4, so tau goes above 1 and the cost is the reference's
    tau, acc, cost = choose_threshold(scores, correct, costs, 0.8, fallback=1, router_cost=5.0)
    assert tau > 1.0 and acc == 1.0 and cost == 4.0

    class Exploding(nn.Module):
        arch = None

        def forward(self, x):
            raise AssertionError("the network must not run")
    net = Exploding()
    d = Dispatcher("sample", net, INFO, ["a", "b"], costs, threshold=tau, fallback=1, macs=100)
    assert d.constant_choice == 1 and d.macs_per_image == 0 and d.network_macs == 100
    assert d.route(images(5)).tolist() == [1] * 5
    dl = Dispatcher("label", net, INFO, ["a", "b"], costs, label_to_model=[0, 0, 0, 0], macs=100)
    assert dl.constant_choice == 0 and dl.route(images(3)).tolist() == [0] * 3
    mixed = Dispatcher("label", net, INFO, ["a", "b"], costs, label_to_model=[0, 1, 0, 0], macs=9)
    assert mixed.constant_choice is None and mixed.macs_per_image == 9


def test_tau_zero_sends_everything_to_the_cheapest_without_the_network():
    correct = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], bool)
    scores = np.array([[0.9, 1.0], [0.8, 1.0], [0.7, 1.0], [0.6, 1.0]], np.float32)
    costs = np.array([1.0, 4.0])
    # the cheap model alone holds 0.75: tau 0 costs 1, any tau that runs the network 1 + 0.5
    tau, acc, cost = choose_threshold(scores, correct, costs, 0.75, fallback=1, router_cost=0.5)
    assert tau == 0.0 and acc == 0.75 and cost == 1.0
    d = Dispatcher("sample", nn.Identity(), INFO, ["a", "b"], costs, threshold=0.0, fallback=1,
                   macs=7)
    assert d.constant_choice == 0 and d.macs_per_image == 0
