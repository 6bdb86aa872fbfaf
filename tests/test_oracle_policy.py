"""Oracle policies on tiny hand-made tables whose answers are worked out in the comments."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.tables import PredictionTable, TableMismatchError
from common.ensembles import is_ensemble
from oracle.policy import (Policy, PolicyError, fit_policy, per_sample_choice,
                           reference_index)
from zoo.committee import committee_name


def make_table(labels, correct, n_classes, names=None, split="val") -> PredictionTable:
    """A table whose model m is right on sample n iff correct[n][m] (wrong = label + 1)."""
    labels = np.asarray(labels, dtype=np.int64)
    correct = np.asarray(correct, dtype=bool)
    names = names or [f"m{i}" for i in range(correct.shape[1])]
    preds = np.where(correct, labels[:, None], (labels[:, None] + 1) % n_classes)
    probs = np.zeros((len(labels), len(names), n_classes), dtype=np.float16)
    return PredictionTable(names, labels, preds, probs, np.arange(len(labels)), split)


# The main hand table. Models A, B, R, D with costs 1, 2, 5, 9; 4 classes, label 3 absent.
#            A  B  R  D
HAND = [(0, [1, 1, 1, 1]),   # s0
        (0, [1, 1, 1, 0]),   # s1
        (0, [0, 1, 1, 1]),   # s2
        (0, [0, 0, 1, 1]),   # s3
        (0, [0, 0, 1, 1]),   # s4
        (1, [0, 1, 1, 1]),   # s5
        (1, [0, 1, 0, 1]),   # s6
        (1, [0, 1, 0, 0]),   # s7
        (1, [1, 0, 1, 0]),   # s8
        (2, [0, 0, 0, 0]),   # s9   label 2: no model is ever right
        (2, [0, 0, 0, 0])]   # s10
# Right answers: A 3, B 6, R 7, D 6 of 11 -> reference R (index 2), which is NOT the dearest.
# Per label (A, B, R, D): label 0 (n=5): 2, 3, 5, 4;  label 1 (n=4): 1, 3, 2, 2;  label 2: 0s.
# On label 1 the cheaper B (3/4) is strictly better than R (2/4) but does not cover R's
# correct set {s5, s8}: B covers s5 only.
COSTS = np.array([1.0, 2.0, 5.0, 9.0])
NAMES = ["A", "B", "R", "D"]


@pytest.fixture
def hand() -> PredictionTable:
    return make_table([l for l, _ in HAND], [c for _, c in HAND], 4, NAMES)


def test_reference_is_most_accurate_not_dearest(hand):
    assert reference_index(hand) == 2
    assert reference_index(hand, COSTS) == 2


def test_a_committee_is_never_the_reference_unless_nothing_else_is_there():
    # The hand table with D renamed as a committee and made right on s7 and s8 too: 8 right of
    # 11, more than R's 7. R stays the reference; the committee does not take it.
    names = ["A", "B", "R", committee_name("B", 3)]
    assert is_ensemble(names[3]) and not any(is_ensemble(n) for n in NAMES)
    correct = [list(c) for _, c in HAND]
    correct[7][3] = correct[8][3] = 1                          # D: 6 -> 8 right of 11
    t = make_table([l for l, _ in HAND], correct, 4, names)
    assert t.correct.sum(axis=0).tolist() == [3, 6, 7, 8]
    assert reference_index(t) == 2 and reference_index(t, COSTS) == 2
    only = t.select_models([names[3]])                         # nothing but a committee
    assert reference_index(only) == 0


def test_reference_tie_goes_to_cheaper_model_by_cost_vector():
    # m0 and m1 both right on 2 of 3; m1 is cheaper although it has the higher index.
    t = make_table([0, 0, 1], [[1, 1, 0], [1, 0, 0], [0, 1, 1]], 2)
    assert reference_index(t, np.array([3.0, 1.0, 0.5])) == 1
    assert reference_index(t, np.array([1.0, 1.0, 0.5])) == 0   # equal cost: lower index
    assert reference_index(t) == 0                              # no costs: lower index


def test_overlap_at_zero(hand):
    p = fit_policy("overlap", hand, COSTS, 0.0)
    # label 0: R's correct set is all 5; only R covers all 5 -> R.
    # label 1: R's correct set {s5, s8}; A covers s8, B s5, D s5 -> only R covers both -> R,
    #          although B is strictly more accurate on label 1 (the overlap rule's blind spot).
    # label 2: R is never right -> every model covers the empty set -> the cheapest, A.
    # label 3: absent from val -> the reference R.
    assert p.label_to_model == {0: "R", 1: "R", 2: "A", 3: "R"}
    assert p.reference == "R" and p.meta["absent_labels"] == [3]
    # expected cost = (5*5 + 4*5 + 2*1) / 11 = 47/11; right answers 5 + 2 + 0 = 7
    assert p.meta["expected_cost"] == pytest.approx(47 / 11)
    assert p.meta["val_accuracy"] == pytest.approx(7 / 11)


def test_accuracy_at_zero_takes_cheaper_better_model(hand):
    p = fit_policy("accuracy", hand, COSTS, 0.0)
    # label 0: need >= 5 right -> R.  label 1: need >= 2 -> B (3, cost 2) beats R (2, cost 5).
    # label 2: need >= 0 -> A.  label 3: absent -> R.
    assert p.label_to_model == {0: "R", 1: "B", 2: "A", 3: "R"}
    assert p.meta["expected_cost"] == pytest.approx((25 + 8 + 2) / 11)
    assert p.meta["val_accuracy"] == pytest.approx(8 / 11)


def test_budget_at_zero(hand):
    # need >= 7 right in total. Options (right, n*cost): label 0 A(2,5) B(3,10) R(5,25) D(4,45);
    # label 1 A(1,4) B(3,8) R(2,20) D(2,36); label 2 A(0,2).
    # R+B+A = 8 right, cost 35 (least); B+B = 6 < 7; D+B = 7 but cost 53+2.
    p = fit_policy("budget", hand, COSTS, 0.0)
    assert p.label_to_model == {0: "R", 1: "B", 2: "A", 3: "R"}
    assert p.meta["needed_correct"] == 7
    assert p.meta["expected_cost"] == pytest.approx(35 / 11)


def test_policies_with_a_sacrifice(hand):
    # overlap s=0.5: label 0 needs >= 2.5 of R's 5 -> B covers 3 -> B (A covers 2: no);
    # label 1 needs >= 1 of {s5, s8}: A covers s8 -> A.
    assert fit_policy("overlap", hand, COSTS, 0.5).label_to_model == \
        {0: "B", 1: "A", 2: "A", 3: "R"}
    # accuracy s=0.25: label 0 needs >= 5 - 1.25 = 3.75 -> R (5) is cheaper than D (4);
    # label 1 needs >= 2 - 1 = 1 -> A.
    assert fit_policy("accuracy", hand, COSTS, 0.25).label_to_model == \
        {0: "R", 1: "A", 2: "A", 3: "R"}
    # accuracy s=0.4: label 0 needs >= 3 -> B.
    assert fit_policy("accuracy", hand, COSTS, 0.4).label_to_model[0] == "B"
    # budget s=1/11: need >= 6 right. B+B = 6 at cost 10+8+2 = 20; R+A = 6 at 31; A+B = 5.
    p = fit_policy("budget", hand, COSTS, 1 / 11)
    assert p.label_to_model == {0: "B", 1: "B", 2: "A", 3: "R"}
    assert p.meta["expected_cost"] == pytest.approx(20 / 11)


def test_label_nobody_gets_right_goes_to_cheapest_for_every_kind(hand):
    for kind in ("overlap", "accuracy", "budget"):
        assert fit_policy(kind, hand, COSTS, 0.0).label_to_model[2] == "A", kind


def test_ties_in_cost_pick_lower_index():
    # All three models are always right, so accuracy ties everywhere.
    # costs (1, 1, 5): m0 and m1 are the cheapest, equal -> the lower index m0 is the reference.
    t = make_table([0, 1, 1], [[1, 1, 1], [1, 1, 1], [1, 1, 1]], 2)
    costs = np.array([1.0, 1.0, 5.0])
    assert reference_index(t, costs) == 0
    # now m0 is the dear one: m1 and m2 tie at cost 1 -> m1
    costs = np.array([5.0, 1.0, 1.0])
    assert reference_index(t, costs) == 1
    for kind in ("overlap", "accuracy", "budget"):
        p = fit_policy(kind, t, costs, 0.0)
        assert set(p.label_to_model.values()) == {"m1"}, kind


def test_route_maps_labels_and_falls_back_to_reference(hand):
    p = fit_policy("accuracy", hand, COSTS, 0.0)
    # labels 0 -> R(2), 1 -> B(1), 2 -> A(0), 3 -> R(2), 7 (unknown) -> reference R(2)
    assert p.route(np.array([0, 1, 2, 3, 7])).tolist() == [2, 1, 0, 2, 2]
    other = make_table([0], [[1, 1, 1, 1]], 4, ["A", "B", "X", "D"])
    with pytest.raises(TableMismatchError, match="refit"):
        p.route(other.labels, other)


def test_policy_json_round_trip(hand, tmp_path):
    for kind in ("overlap", "accuracy", "budget", "per_sample"):
        p = fit_policy(kind, hand, COSTS, 0.02)
        path = p.save(tmp_path / f"{kind}.json")
        q = Policy.load(path)
        assert q.to_dict() == p.to_dict()
        assert q.label_to_model == p.label_to_model        # int keys restored
        assert np.array_equal(q.route(hand.labels, hand), p.route(hand.labels, hand))


def test_policy_cost_method_matches_meta(hand):
    p = fit_policy("budget", hand, COSTS, 1 / 11)
    assert p.cost(COSTS) == pytest.approx(p.meta["expected_cost"])


def test_per_sample_choice_hand(hand):
    # cheapest right model per sample; s9, s10 (nobody right) -> reference R.
    expect = [0, 0, 1, 2, 2, 1, 1, 1, 0, 2, 2]
    assert per_sample_choice(hand, COSTS).tolist() == expect
    assert fit_policy("per_sample", hand, COSTS, 0).route(hand.labels, hand).tolist() == expect
    # with costs reversed in order (D cheapest ... A dearest) the choices follow the vector
    rev = np.array([9.0, 5.0, 2.0, 1.0])
    # s0 D; s1 R; s2 D; s3 D; s4 D; s5 D; s6 D; s7 B; s8 R; s9, s10 -> reference R
    assert per_sample_choice(hand, rev).tolist() == [3, 2, 3, 3, 3, 3, 3, 1, 2, 2, 2]


def test_per_sample_with_sacrifice_is_least_cost_meeting_the_count(hand):
    # reference R has 7 right. s = 0: keep >= 7 right. A (cost 1) is right on s0, s1, s8 for
    # free; 4 more from the rest (extra cost over A): s2 B+1, s5 B+1, s6 B+1, s7 B+1, s3 R+4,
    # s4 R+4 -> the four +1 samples; everything else goes to A.
    chosen = per_sample_choice(hand, COSTS, sacrifice=0.0)
    assert chosen.tolist() == [0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0]
    assert hand.correct[np.arange(11), chosen].sum() == 7
    # s = 3/11: need >= 4 -> only s2 from the extra ones (lowest index among ties)
    chosen = per_sample_choice(hand, COSTS, sacrifice=3 / 11)
    assert chosen.tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]


def greedy_budget(n_c, k_cm, costs, needed):
    """The greedy a knapsack is tempted by: start from the reference, repeatedly apply the
    label switch with the best saving per lost right answer that still fits."""
    ref = int(np.argmax(k_cm.sum(axis=0)))
    picks = np.full(len(n_c), ref)
    while True:
        have = k_cm[np.arange(len(n_c)), picks].sum()
        best = None
        for c in range(len(n_c)):
            for m in range(k_cm.shape[1]):
                save = n_c[c] * (costs[picks[c]] - costs[m])
                lost = k_cm[c, picks[c]] - k_cm[c, m]
                if save > 0 and have - lost >= needed:
                    ratio = save / max(lost, 1e-9)
                    if best is None or ratio > best[0]:
                        best = (ratio, c, m)
        if best is None:
            return picks
        picks[best[1]] = best[2]


def test_budget_beats_greedy_on_crafted_case():
    # Cheap X (cost 0) and reference R (cost 1, always right). Labels of 12, 9, 9 samples;
    # X right on 6 of 12, 4 of 9, 4 of 9: switching a label to X saves 12, 9, 9 (n * cost)
    # and loses 6, 5, 5 right answers. s = 10/30 allows losing 10.
    # Greedy: best ratio 12/6 = 2 first (loses 6), then 9/5 does not fit (11 > 10):
    #   cost (9 + 9) / 30 = 0.6.  Exact: switch labels 1 and 2 (loses 10): cost 12/30 = 0.4.
    labels, correct = [], []
    for c, (n, x_right) in enumerate([(12, 6), (9, 4), (9, 4)]):
        for i in range(n):
            labels.append(c)
            correct.append([i < x_right, True])
    t = make_table(labels, correct, 3, ["X", "R"])
    costs = np.array([0.0, 1.0])
    p = fit_policy("budget", t, costs, 10 / 30)
    assert p.label_to_model == {0: "R", 1: "X", 2: "X"}
    assert p.meta["expected_cost"] == pytest.approx(0.4)
    g = greedy_budget(np.array([12, 9, 9]), np.array([[6, 12], [4, 9], [4, 9]]), costs, 20)
    assert g.tolist() == [0, 1, 1]
    assert (np.array([12, 9, 9]) @ costs[g]) / 30 == pytest.approx(0.6)


def random_table(rng, n=60, m=4, c=4, split="val"):
    labels = rng.integers(0, c, n)
    skill = np.sort(rng.uniform(0.2, 0.95, m))
    correct = rng.random((n, m)) < skill
    return make_table(labels, correct, c, split=split)


def test_budget_is_exact_against_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(25):
        t = random_table(rng, n=int(rng.integers(5, 40)), m=3, c=4)
        costs = rng.uniform(0.1, 3.0, 3).round(1)
        s = float(rng.choice([0.0, 0.03, 0.1, 0.3]))
        p = fit_policy("budget", t, costs, s)
        ref = reference_index(t, costs)
        n_c = np.bincount(t.labels, minlength=4)
        k = np.zeros((4, 3), int)
        np.add.at(k, t.labels, t.correct.astype(int))
        needed = int(np.ceil(k[:, ref].sum() - s * t.n_samples - 1e-9))
        best = min(n_c @ costs[list(a)] for a in itertools.product(range(3), repeat=4)
                   if k[np.arange(4), list(a)].sum() >= needed)
        assert p.meta["expected_cost"] * t.n_samples == pytest.approx(best), trial


@pytest.mark.parametrize("kind", ["overlap", "accuracy", "budget", "per_sample"])
def test_cost_never_rises_with_sacrifice_and_val_budget_holds(kind):
    rng = np.random.default_rng(7)
    grid = [0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0]
    for _ in range(15):
        t = random_table(rng, n=80, m=5, c=5)
        costs = rng.uniform(0.5, 10.0, 5)          # deliberately not sorted with the table
        ref = reference_index(t, costs)
        ref_acc = t.correct[:, ref].mean()
        last = np.inf
        for s in grid:
            if kind == "per_sample":
                chosen = per_sample_choice(t, costs, reference=ref, sacrifice=s)
                cost = costs[chosen].mean()
                acc = t.correct[np.arange(t.n_samples), chosen].mean()
            else:
                p = fit_policy(kind, t, costs, s)
                cost, acc = p.meta["expected_cost"], p.meta["val_accuracy"]
                assert cost <= costs[ref] + 1e-12       # never dearer than the reference
                if kind != "budget":                    # ... on any single label either
                    assert all(costs[m] <= costs[ref] for m in p.label_indices().values())
            assert cost <= last + 1e-12, (kind, s)
            assert acc >= ref_acc - s - 1e-12, (kind, s)  # the budget holds on val
            last = cost


@pytest.mark.parametrize("kind", ["overlap", "accuracy"])
def test_at_zero_every_label_is_at_least_as_good_as_reference(kind):
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = random_table(rng, n=50, m=4, c=3)
        costs = rng.uniform(0.5, 5.0, 4)
        p = fit_policy(kind, t, costs, 0.0)
        ref = reference_index(t, costs)
        for c, m in p.label_indices().items():
            rows = t.labels == c
            assert t.correct[rows, m].sum() >= t.correct[rows, ref].sum()


def test_bad_inputs_have_clear_errors(hand, tmp_path):
    with pytest.raises(PolicyError, match="unknown policy kind"):
        fit_policy("cheapest", hand, COSTS, 0.0)
    with pytest.raises(PolicyError, match="fraction"):
        fit_policy("budget", hand, COSTS, 5)
    with pytest.raises(PolicyError, match="one cost per model"):
        fit_policy("budget", hand, COSTS[:3], 0.0)
    with pytest.raises(PolicyError, match="finite"):
        fit_policy("budget", hand, np.array([1.0, np.inf, 2.0, 3.0]), 0.0)
    with pytest.raises(PolicyError, match="needs the prediction table"):
        fit_policy("per_sample", hand, COSTS, 0.0).route(hand.labels)
    with pytest.raises(PolicyError, match="stores no costs"):
        Policy("per_sample", 0.0, NAMES, None, "R").route(hand.labels, hand)
    with pytest.raises(PolicyError, match="not among"):
        Policy("budget", 0.0, NAMES, {0: "A"}, "Z")
    (tmp_path / "p.json").write_text('{"kind": "budget"}')
    with pytest.raises(PolicyError, match="lacks keys"):
        Policy.load(tmp_path / "p.json")
