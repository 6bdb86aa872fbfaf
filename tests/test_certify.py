"""Certified selection: the p-value against hand-worked values, the fixed-sequence stop, the
s = 0 fallback to the reference, and a synthetic population whose true risks are known."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.tables import PredictionTable
from router.base import RouterError, table_precision
from router.cascade import chain_at, simulate_cascade
from router.certified import REFERENCE_REASON, certify_context, certify_level, certify_singles, \
    describe_uncertified, last_try
from router.kind import KindSettings
from router.kind_cascade import CascadeKind
from router.kind_learned import LearnedCascadeKind
from router.certify import GAMMA, _tail, certifies, drop_pvalue, drop_ucb, fixed_sequence, \
    PoolEntry, loss_gain, pareto_path, predicted_bounds, smallest_certifiable, \
    split_calibration
from router.selection import cheapest_single
from router.timing import median_interval, paired_speedup


def test_pvalue_one_image_by_hand():
    # n = 1, no loss, no gain, level 0.5. The nuisance bound for q from 0 disagreements in 1
    # image is Beta(1, 1)'s 1 - gamma quantile = 1 - gamma. On the null boundary mu = 0.5 the
    # tail P(T <= 0) = 1 - p_loss = 1 - (q + 0.5) / 2 is largest at the smallest q = 0.5: 0.5.
    assert drop_pvalue(0, 0, 1, 0.5) == pytest.approx(0.5 + GAMMA, abs=1e-9)


def test_pvalue_when_no_null_point_fits_the_disagreement_bound():
    # 0 disagreements in 10,000 images: q <= 1 - gamma^(1/n) = 6.9e-4 < 0.01, so no null
    # point (which needs q >= s = 0.01) is inside the bound: p = gamma
    assert 1 - GAMMA ** (1 / 10_000) < 0.01
    assert drop_pvalue(0, 0, 10_000, 0.01) == pytest.approx(GAMMA)
    assert certifies(0, 0, 10_000, 0.01, 0.1)
    # an answer identical to the reference is never certified at s = 0 (p >= 1/2)
    assert drop_pvalue(0, 0, 10_000, 0.0) >= 0.5


def test_tail_equals_brute_force_enumeration():
    # P(L - G <= t) for n = 3 images, by listing all 27 outcomes of d in {-1, 0, 1}^3
    for q, s, t in [(0.3, 0.1, 0), (0.5, -0.2, -1), (0.2, 0.0, 1), (0.9, 0.3, 2)]:
        p = {1: (q + s) / 2, -1: (q - s) / 2, 0: 1 - q}
        brute = sum(np.prod([p[d] for d in ds]) for ds in itertools.product((-1, 0, 1), repeat=3)
                    if sum(ds) <= t)
        assert _tail(t, 3, np.array([q]), s)[0] == pytest.approx(brute, abs=1e-12)


def test_ucb_and_pvalue_agree_and_move_the_right_way():
    u = drop_ucb(60, 45, 3000, 0.1)
    assert certifies(60, 45, 3000, u + 1e-4, 0.1) and not certifies(60, 45, 3000, u - 1e-4, 0.1)
    assert u > (60 - 45) / 3000                        # above the point estimate
    assert drop_ucb(60, 45, 3000, 0.05) > u            # less risk, wider bound
    assert drop_ucb(120, 90, 6000, 0.1) < u            # more images, tighter bound
    assert drop_ucb(70, 45, 3000, 0.1) > u             # more losses, higher bound
    # the smallest certifiable level is the bound of an answer that never disagrees
    assert smallest_certifiable(4200, 0.1) == drop_ucb(0, 0, 4200, 0.1)
    assert 0 < smallest_certifiable(4200, 0.1) < 0.002


def test_pvalue_is_valid_at_the_null_boundary():
    # losses and gains drawn with a true drop exactly s: rejected in at most delta of draws
    rng = np.random.default_rng(0)
    n, q, s = 800, 0.05, 0.01
    draws = rng.multinomial(n, [(q + s) / 2, (q - s) / 2, 1 - q], size=400)
    rate = np.mean([certifies(a, b, n, s, 0.1) for a, b, _ in draws])
    assert rate <= 0.1


def test_fixed_sequence_stops_at_the_first_failure():
    n, s = 10_000, 0.01
    counts = [(0, 0), (100, 0), (0, 0)]                # the 2nd sits at its level: p ~ 1/2
    assert certifies(*counts[0], n, s, 0.1) and certifies(*counts[2], n, s, 0.1)
    assert not certifies(*counts[1], n, s, 0.1)
    assert fixed_sequence(counts, n, s, 0.1) == 1      # the 3rd is never reached
    assert fixed_sequence([], n, s, 0.1) == 0


def test_pareto_path_by_hand():
    cost = np.array([10.0, 8.0, 8.0, 5.0, 3.0, 1.0])
    drop = np.array([0.0, 0.002, 0.001, 0.004, 0.003, 0.02])
    # reference (cost 10) left out; at cost 8 the lower drop wins; 5 is beaten by the cheaper 3;
    # 1 is over the level
    assert pareto_path(cost, drop, 0.01, reference_cost=10.0).tolist() == [2, 4]
    assert pareto_path(cost, drop, 0.001, reference_cost=10.0).tolist() == [2]
    assert pareto_path(cost, drop, 0.05, reference_cost=10.0).tolist() == [2, 4, 5]
    assert pareto_path(cost, drop, 0.05, max_len=2, reference_cost=10.0).tolist() == [2, 5]


def test_split_is_seeded_and_disjoint():
    a, b = split_calibration(100, 0.3, 0)
    assert len(a) == 30 and len(b) == 70 and not set(a) & set(b)
    assert (split_calibration(100, 0.3, 0)[0] == a).all()
    with pytest.raises(RouterError, match="select_share"):
        split_calibration(100, 1.5, 0)


def test_loss_gain_counts():
    c = np.array([1, 0, 1, 0], bool)
    r = np.array([1, 1, 0, 0], bool)
    assert loss_gain(c, r) == (1, 1)


def _population(rng, n, n_models, drop, q, ref_acc=0.9):
    """Correctness (n, M + 1) of M candidates and a reference (last column): each candidate
    disagrees with the reference on a share q of images, with expected drop ``drop``."""
    ref = rng.random(n) < ref_acc
    cols = []
    for _ in range(n_models):
        u = rng.random(n)
        flip_loss = ref & (u < (q + drop) / 2 / ref_acc)
        flip_gain = ~ref & (u < (q - drop) / 2 / (1 - ref_acc))
        cols.append(np.where(flip_loss, False, np.where(flip_gain, True, ref)))
    return np.column_stack(cols + [ref])


def test_certified_rule_holds_its_risk_where_the_estimate_rule_does_not():
    """30 cheap candidates, each truly 0.4 points worse than allowed (s = 1 %): any one
    chosen is a miss. The estimate rule (cheapest with val acc - 1 SE >= target) picks one in
    most draws; the certified rule in at most delta of them."""
    rng = np.random.default_rng(1)
    m, s, delta, n = 30, 0.01, 0.1, 1000
    cvec = np.concatenate([np.linspace(1.0, 2.0, m), [10.0]])
    est_miss = cert_miss = 0
    draws = 150
    for _ in range(draws):
        correct = _population(rng, n, m, drop=s + 0.004, q=0.06)
        ref = m
        target = correct[:, ref].mean() - s
        est, _ = cheapest_single(correct, cvec, ref, target, z=1.0)
        est_miss += est != ref
        sel, cer = split_calibration(n, 0.3, int(rng.integers(1 << 30)))
        cs, _ = certify_singles(correct[sel], correct[cer], ref, cvec, s, delta)
        cert_miss += cs != ref
    assert est_miss / draws > 0.3
    assert cert_miss / draws <= delta


def _table(correct: np.ndarray, n_classes: int = 4, seed: int = 0,
           informative: bool = True) -> PredictionTable:
    """A prediction table whose correctness is ``correct`` (n, M); more confident where right
    (``informative``) or equally confident either way."""
    rng = np.random.default_rng(seed)
    n, m = correct.shape
    labels = rng.integers(0, n_classes, n)
    preds = np.where(correct, labels[:, None], (labels[:, None] + 1) % n_classes)
    probs = np.full((n, m, n_classes), 0.02, dtype=np.float32)
    conf = (np.where(correct, rng.uniform(0.6, 0.99, (n, m)), rng.uniform(0.3, 0.7, (n, m)))
            if informative else rng.uniform(0.3, 0.99, (n, m)))
    rows, cols = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    probs[rows, cols, preds] = conf
    probs /= probs.sum(axis=2, keepdims=True)
    return PredictionTable([f"m{i}" for i in range(m)], labels, preds, probs, np.arange(n), "val")


def _split(table: PredictionTable, cvec: np.ndarray, ref: int = 2):
    """The kinds' context on the select/certify split of a 3-model table whose reference is
    ``ref`` (2-stage chains; the learned cascade's heads on one split, no cross-fitting)."""
    settings = KindSettings(max_stages=2, grid=6, learned_folds=0, seed=0)
    return certify_context("test", table, cvec, ref, settings, select_share=0.3)


def _level(ctx, s: float):
    """The certified level over the two table-simulated kinds."""
    return certify_level(ctx, s, 0.1, [CascadeKind, LearnedCascadeKind])


def test_certify_level_falls_back_to_the_reference_at_s0_and_routes_at_5pct():
    # confidences that say nothing about correctness: no cascade can beat the reference, and
    # at s = 0 nothing cheaper can be certified
    rng = np.random.default_rng(3)
    correct = _population(rng, 3000, 2, drop=0.01, q=0.04)
    val = _table(correct, informative=False)
    cvec = np.array([1.0, 2.0, 8.0])
    ref = 2
    split = _split(val, cvec, ref)
    at0 = _level(split, 0.0)
    assert at0.selected == "single:m2" and at0.cheapest_single == ref
    assert at0.record["certified"] == 0
    assert at0.record["smallest_certifiable"] == pytest.approx(
        smallest_certifiable(split.certify.n_samples, 0.1))
    assert at0.kinds["cascade"].fit_.stages == [ref]
    assert at0.certificates["cascade"].reason == REFERENCE_REASON
    assert at0.certificates["cascade"].drop_ucb == 0.0
    at5 = _level(split, 0.05)
    assert at5.record["certified"] >= 1
    assert at5.selected != "single:m2"
    chosen = at5.certificates[at5.selected]
    assert chosen.certified and chosen.drop_ucb <= 0.05
    # a certified single model costs less than the reference
    assert cvec[at5.cheapest_single] < cvec[ref]
    # the learned cascade fits its heads on the select part: its candidates are tested after
    # every table-simulated one (singles, cascades), never between them
    fams = [e["family"] for e in at5.record["path"]]
    assert "learned-cascade" in fams and "cascade" in fams
    first = fams.index("learned-cascade")
    assert all(f == "learned-cascade" for f in fams[first:])
    assert LearnedCascadeKind.path_group > CascadeKind.path_group


def test_a_cascade_that_beats_the_reference_is_certified_at_s0():
    # confidences that flag the cheap models' mistakes: the cascade m0 -> m2 is more accurate
    # than m2 alone, so at s = 0 a routed answer is certified, cheaper than the reference
    rng = np.random.default_rng(3)
    val = _table(_population(rng, 3000, 2, drop=0.01, q=0.04))
    cvec = np.array([1.0, 2.0, 8.0])
    split = _split(val, cvec)
    at0 = _level(split, 0.0)
    assert at0.selected in ("cascade", "learned-cascade")
    cert = at0.certificates[at0.selected]
    assert cert.certified and cert.drop_ucb <= 0.0 and cert.n_gain > cert.n_loss


def test_median_interval_and_paired_speedup_by_hand():
    # coverage of the (k, n-1-k) order statistics is 1 - 2 P(Binomial(n, 1/2) <= k):
    # n = 7: P(B <= 0) = 1/128 -> 98.4 %, P(B <= 1) = 8/128 -> 87.5 %: (0, 6)
    # n = 10: P(B <= 1) = 11/1024 -> 97.9 %, P(B <= 2) = 56/1024: (1, 8)
    assert median_interval(7) == (0, 6)
    assert median_interval(10) == (1, 8)
    assert median_interval(20) == (5, 14)
    base = [2.0, 2.0, 2.2, 2.0, 4.0, 2.0, 2.0]
    mine = [1.0, 1.0, 1.0, 0.8, 1.0, 1.0, 2.0]
    # per-round ratios 2, 2, 2.2, 2.5, 4, 2, 1 -> sorted 1, 2, 2, 2, 2.2, 2.5, 4
    assert paired_speedup(base, mine) == (2.0, 1.0, 4.0)


def test_a_negative_level_certifies_only_answers_that_beat_the_reference():
    # s = -0.2 %: an answer at least 0.2 points MORE accurate than the reference. In the
    # informative table the cascade m0 -> m2 gains about one point on m2; at -1 % that gain
    # cannot be certified with 2,100 images, and in the uninformative table nothing can.
    rng = np.random.default_rng(3)
    cvec = np.array([1.0, 2.0, 8.0])
    good = _table(_population(rng, 3000, 2, drop=0.01, q=0.04))
    split = _split(good, cvec)
    lv = _level(split, -0.002)
    cert = lv.certificates[lv.selected]
    assert lv.selected == "cascade" and cert.certified and cert.drop_ucb <= -0.002
    # it clears the reference by the margin on val's certify part
    assert lv.candidates["cascade"].val_accuracy >= split.certify.correct[:, 2].mean() + 0.002
    at1 = _level(split, -0.01)
    assert at1.selected == "single:m2" and not at1.certificates["single:m2"].certified
    assert describe_uncertified(at1, -0.01).startswith(
        "no answer could be certified as at least 1 points more accurate than the reference")
    flat = _table(_population(rng, 3000, 2, drop=0.01, q=0.04), informative=False)
    split = _split(flat, cvec)
    lv = _level(split, -0.002)
    assert lv.selected == "single:m2" and not lv.certificates[lv.selected].certified


def test_the_deployed_answer_is_the_cheapest_certified_one():
    # every family's certified candidate, the singles' included: the deployed one costs least
    rng = np.random.default_rng(3)
    val = _table(_population(rng, 3000, 2, drop=0.01, q=0.04))
    cvec = np.array([1.0, 2.0, 8.0])
    split = _split(val, cvec)
    for s in (0.01, 0.05):
        at = _level(split, s)
        sel = at.selected
        cost = (cvec[val.model_names.index(sel.split(":", 1)[1])] if sel.startswith("single:")
                else at.candidates[sel].fit_ms_per_image)
        certified = [c.fit_ms_per_image for c in at.candidates.values() if c.meets_target]
        assert at.certificates[sel].certified and cost == min(certified)


def test_last_try_when_no_candidate_is_predicted_to_pass():
    # pool: the reference (0), a dear committee (1), a cheap cascade (2), a cheap single (3)
    pool = [PoolEntry("single", 0, 8.0, 0.0), PoolEntry("committee-cascade", 5, 12.0, -0.004),
            PoolEntry("cascade", 7, 2.0, -0.002), PoolEntry("single", 3, 1.0, 0.001)]
    predicted = np.array([0.0005, 0.001, 0.0008, 0.004])
    cost, drop = np.array([e.cost for e in pool]), np.array([e.drop for e in pool])
    # s = -0.1 %: nothing is predicted to pass; the try is the lowest predicted bound among
    # those whose estimate clears the level (1 and 2): the cascade; never the reference
    assert last_try(cost, drop, predicted, 0, -0.001, 8.0).tolist() == [2]
    # s = -0.3 %: only the committee's estimate clears it, though it costs more than the
    # reference (a gain may)
    assert last_try(cost, drop, predicted, 0, -0.003, 8.0).tolist() == [1]
    assert last_try(cost, drop, predicted, 0, -0.005, 8.0).tolist() == []
    # s = 0: cheaper than the reference only: the committee is out
    predicted[2] = 0.002
    assert last_try(cost, drop, predicted, 0, 0.0, 8.0).tolist() == [2]
    # s = 0.2 %: the single's estimate (0.1 %) clears it too, and its bound is lower now
    predicted[3] = 0.0015
    assert last_try(cost, drop, predicted, 0, 0.002, 8.0).tolist() == [3]


def test_an_empty_path_gets_its_last_try_and_keeps_the_risk():
    # the cascade m0 -> m2 gains about a point. At a level just above its select estimate
    # no candidate is predicted to certify (the predicted bound adds about a point of noise),
    # so the path would be empty; the last try tests the best one alone at the full delta
    rng = np.random.default_rng(3)
    cvec = np.array([1.0, 2.0, 8.0])
    split = _split(_table(_population(rng, 3000, 2, drop=0.01, q=0.04)), cvec)
    best = min(e["drop_select"] for e in _level(split, -0.005).record["path"])
    s = round(best + 0.001, 6)
    lv = _level(split, s)
    assert len(lv.record["path"]) == 1
    tried = lv.record["path"][0]
    assert tried["drop_select"] <= s
    assert lv.record["certified"] == (1 if certifies(tried["loss"], tried["gain"],
                                                     split.certify.n_samples, s, 0.1) else 0)
    # beyond every estimate, nothing is tried
    assert _level(split, round(best - 0.001, 6)).record["path"] == []


def test_predicted_bounds_equal_each_entry_s_own():
    rng = np.random.default_rng(5)
    pool = [PoolEntry("cascade", i, 1.0, float(d), float(se), int(n)) for i, (d, se, n) in
            enumerate(zip(rng.normal(0, 0.01, 50), rng.uniform(0, 0.01, 50),
                          rng.integers(0, 3000, 50)))]
    pool[0].se, pool[1].n = 0.0, 0                  # the variance floor, an empty estimate
    for w in (None, 0.0, 1.5):
        want = [e.predicted_bound(4200, 1.28, w) for e in pool]
        assert predicted_bounds(pool, 4200, 1.28, w) == pytest.approx(want, rel=1e-12, abs=0)


def test_a_table_kind_scores_a_candidate_on_any_table():
    # correct_on(entry, table) simulates the candidate on the table it is given; on the
    # certify part it is what the certified path tests, and by hand it is the chain's choice
    rng = np.random.default_rng(3)
    cvec = np.array([1.0, 2.0, 8.0])
    ctx = _split(_table(_population(rng, 3000, 2, drop=0.01, q=0.04)), cvec)
    kind = CascadeKind(ctx)
    entries = kind.path_entries(0.01)
    assert entries
    for e in entries[:: max(1, len(entries) // 5)]:
        assert (kind.correct_on(e, ctx.certify) == kind.correct_on_certify(e)).all()
        stages, th = chain_at(kind.prepared(), e.key)
        ch = simulate_cascade(table_precision(ctx.val.confidence), stages, th)
        want = ctx.val.correct[np.arange(ctx.val.n_samples), ch]
        assert (kind.correct_on(e, ctx.val) == want).all()
        # on the select part it is the estimate the entry carries
        assert ctx.ref_accuracy - want.mean() == pytest.approx(e.drop)


def test_chain_entries_are_built_once_per_zoo_and_left_intact_by_the_levels():
    # the simulated chains do not depend on the level: one list per kind and zoo, which the
    # levels read and never extend (the pool copies it)
    rng = np.random.default_rng(3)
    ctx = _split(_table(_population(rng, 3000, 2, drop=0.01, q=0.04)), np.array([1.0, 2.0, 8.0]))
    first = CascadeKind(ctx).path_entries(0.0)
    n = len(first)
    for s in (0.0, 0.01, -0.002):
        certify_level(ctx, s, 0.1, [CascadeKind])
    again = CascadeKind(ctx).path_entries(0.05)
    assert again is first and len(again) == n
    assert all(e.family == "cascade" for e in again)
