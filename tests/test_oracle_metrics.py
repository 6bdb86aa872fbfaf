"""Metrics and the sacrifice sweep on hand tables: fitted on val, scored on a separate test."""
from __future__ import annotations

import numpy as np
import pytest

from common.io import read_csv, write_csv
from common.tables import CostTable, ModelCost, PredictionTable, TableMismatchError
from oracle.metrics import (bootstrap_held, classification_metrics, evaluate_assignment,
                            paired_comparison,
                            sacrifice_sweep, sweep_columns)


def make_table(labels, correct, n_classes, names, split) -> PredictionTable:
    labels = np.asarray(labels, dtype=np.int64)
    correct = np.asarray(correct, dtype=bool)
    preds = np.where(correct, labels[:, None], (labels[:, None] + 1) % n_classes)
    probs = np.zeros((len(labels), len(names), n_classes), dtype=np.float16)
    return PredictionTable(names, labels, preds, probs, np.arange(len(labels)), split)


def cost_table() -> CostTable:
    # C: 1000 images/s -> 1 ms/image, 10 MACs;  R: 250 images/s -> 4 ms/image, 100 MACs
    return CostTable({"C": ModelCost("C", 1, 1, 10, 0.1, 1.0, 1000.0),
                      "R": ModelCost("R", 2, 2, 100, 0.2, 5.0, 250.0)})


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1, predicted 2, true 2 -> P 1/2, R 1/2, F1 1/2
    # class 1: tp 2, predicted 3, true 2 -> P 2/3, R 1,   F1 0.8
    # class 2: tp 0, predicted 0, true 1 -> P 0,   R 0,   F1 0
    # class 3: never seen nor predicted -> left out of the macro average
    m = classification_metrics(labels, preds, 4)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert m["recall"] == pytest.approx(1.5 / 3)
    assert m["f1"] == pytest.approx(1.3 / 3)
    sk = pytest.importorskip("sklearn.metrics")
    p, r, f, _ = sk.precision_recall_fscore_support(labels, preds, average="macro",
                                                    zero_division=0)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_metrics(labels, preds, 2)


def test_evaluate_assignment_by_hand():
    # 4 samples; C right on samples 0, 1; R right on all.
    t = make_table([0, 1, 0, 1], [[1, 1], [1, 1], [0, 1], [0, 1]], 2, ["C", "R"], "test")
    row = evaluate_assignment(t, np.array([0, 0, 1, 1]), cost_table(), "R", sacrifice=0.0)
    # every routed sample is right -> accuracy 1; half at 1 ms, half at 4 ms -> 2.5 ms
    assert row["accuracy"] == 1.0 and row["f1"] == 1.0
    assert row["ms_per_image"] == pytest.approx(2.5)
    assert row["macs_per_image"] == pytest.approx(55.0)
    assert row["speedup_vs_reference"] == pytest.approx(4 / 2.5)
    assert row["share_C"] == 0.5 and row["share_R"] == 0.5
    assert row["budget_held"] is True and row["bootstrap_held"] == 1.0
    # all to C: samples 2, 3 lost -> 0.5, drop 0.5 > s = 0.1
    row = evaluate_assignment(t, np.zeros(4, dtype=np.int64), cost_table(), 1, sacrifice=0.1)
    assert row["accuracy"] == 0.5 and row["budget_held"] is False
    assert row["accuracy_drop"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="model indices"):
        evaluate_assignment(t, np.array([0, 0, 2, 1]), cost_table(), 1)


def test_bootstrap_matches_binomial_and_is_seeded():
    # the policy loses the half of the samples the reference gets right: per resample of 4,
    # drop = (#lost drawn)/4 with #lost ~ Binomial(4, 1/2).
    ref = np.array([1, 1, 1, 1], bool)
    got = np.array([1, 1, 0, 0], bool)
    # s = 0: held iff none lost drawn: 1/16.  s = 0.5: held iff <= 2 drawn: 11/16.
    assert bootstrap_held(ref, got, 0.0, n_boot=4000) == pytest.approx(1 / 16, abs=0.02)
    assert bootstrap_held(ref, got, 0.5, n_boot=4000) == pytest.approx(11 / 16, abs=0.03)
    assert bootstrap_held(ref, got, 0.5, seed=3) == bootstrap_held(ref, got, 0.5, seed=3)
    assert bootstrap_held(ref, ref, 0.0) == 1.0


def test_bootstrap_agrees_with_index_resampling():
    rng = np.random.default_rng(0)
    ref = rng.random(300) < 0.8
    got = np.where(rng.random(300) < 0.9, ref, ~ref)
    s = 0.01
    idx = rng.integers(0, 300, (2000, 300))
    direct = ((ref[idx].mean(1) - got[idx].mean(1)) <= s + 1e-9).mean()
    assert bootstrap_held(ref, got, s, n_boot=2000) == pytest.approx(direct, abs=0.05)


def sweep_tables():
    # val: C is right wherever R is, so every rule sends every label to C.
    val = make_table([0, 0, 1, 1], [[1, 1]] * 4, 2, ["C", "R"], "val")
    # test: C fails label 1 (samples 2, 3) -> the val-fitted policy drops 0.5 on test.
    test = make_table([0, 0, 1, 1], [[1, 1], [1, 1], [0, 1], [0, 1]], 2, ["C", "R"], "test")
    return val, test


def test_sweep_fits_on_val_and_scores_on_test():
    _, test = sweep_tables()
    # R strictly better than C on val (in sweep_tables' val they tie and C would be the reference)
    val = make_table([0, 0, 1, 1, 1], [[1, 1], [1, 1], [1, 1], [1, 1], [0, 1]], 2,
                     ["C", "R"], "val")
    # now on val: R 5/5, C 4/5; label 0 C covers 2/2; label 1 C covers 2/3 of R's correct set.
    # s = 0: overlap/accuracy -> label 0 C, label 1 R.  s = 0.5: label 1 needs >= 1.5 -> C.
    rows = sacrifice_sweep(val, test, cost_table(), levels=(0.0, 0.5))
    by = {(r["method"], r["sacrifice"]): r for r in rows}
    assert len(rows) == 1 + 3 * 2 + 1 + 2
    ref = by[("reference", 0.0)]
    assert ref["family"] == "best-single" and ref["accuracy"] == 1.0 and ref["ms_per_image"] == 4
    for kind in ("overlap", "accuracy"):
        r0 = by[(f"oracle-{kind}", 0.0)]
        # test: label 0 (samples 0, 1) -> C right, label 1 -> R right: accuracy 1, 2.5 ms
        assert r0["family"] == "oracle" and r0["accuracy"] == 1.0
        assert r0["ms_per_image"] == pytest.approx(2.5) and r0["budget_held"] is True
        r5 = by[(f"oracle-{kind}", 0.5)]
        # everything to C: test accuracy 0.5 >= 1 - 0.5 -> held; bootstrap P(<=2 of 4) = 11/16
        assert r5["accuracy"] == 0.5 and r5["budget_held"] is True
        assert r5["speedup_vs_reference"] == pytest.approx(4.0)
        assert r5["bootstrap_held"] == pytest.approx(11 / 16, abs=0.05)
        assert r5["val_accuracy"] == pytest.approx(4 / 5)
    # budget s = 0.5 on val: need >= 5 - 2.5 -> 3 right; all-C gives 4 at 1 ms -> all C.
    assert by[("oracle-budget", 0.5)]["share_C"] == 1.0
    # budget s = 0: need 5 -> label 1 must be R (C loses one): same as the other rules.
    assert by[("oracle-budget", 0.0)]["share_C"] == pytest.approx(0.5)
    # ceiling on test: samples 0, 1 -> C, 2, 3 -> R (C wrong there)
    ceil = by[("oracle-per-sample", 0.0)]
    assert ceil["family"] == "ceiling" and ceil["accuracy"] == 1.0
    assert ceil["ms_per_image"] == pytest.approx(2.5)
    assert by[("oracle-per-sample-budget", 0.5)]["ms_per_image"] == pytest.approx(1.0)


def test_sweep_rows_write_as_csv(tmp_path):
    val, test = sweep_tables()
    rows = sacrifice_sweep(val, test, cost_table(), levels=(0.0, 0.01), kinds=("budget",),
                           n_boot=50)
    cols = sweep_columns(rows)
    assert cols[:3] == ["method", "family", "sacrifice"] and "share_R" in cols
    back = read_csv(write_csv(tmp_path / "oracle.csv", rows, cols))
    assert [r["method"] for r in back] == [r["method"] for r in rows]
    assert float(back[1]["ms_per_image"]) == pytest.approx(rows[1]["ms_per_image"])


def test_sweep_refuses_mismatched_tables_and_bad_levels():
    val, test = sweep_tables()
    other = make_table([0], [[1, 1]], 2, ["C", "X"], "test")
    with pytest.raises(TableMismatchError):
        sacrifice_sweep(val, other, cost_table())
    with pytest.raises(ValueError, match="fractions"):
        sacrifice_sweep(val, test, cost_table(), levels=(1, 5))
    with pytest.raises(ValueError, match="unknown oracle kinds"):
        sacrifice_sweep(val, test, cost_table(), kinds=("magic",))


def test_paired_comparison_exact_mcnemar_by_hand():
    # B alone right on 5 samples, A alone on none: p = 2 * (1/2)^5 = 0.0625
    a = np.array([0, 0, 0, 0, 0, 1, 1], dtype=bool)
    b = np.array([1, 1, 1, 1, 1, 1, 0], dtype=bool)
    r = paired_comparison(a, b)
    assert (r["a_only"], r["b_only"]) == (1, 5)
    # 1 vs 5 discordant: 2 * (C(6,0) + C(6,1)) / 2^6 = 14/64
    assert r["p_value"] == pytest.approx(14 / 64) and r["difference"] == pytest.approx(4 / 7)
    r = paired_comparison(a[:5], b[:5])
    assert r["p_value"] == pytest.approx(0.0625)
    # 1 vs 9: 2 * (1 + 10) / 1024; symmetric in A and B; the same model: p = 1
    a, b = np.zeros(10, bool), np.ones(10, bool)
    a[0], b[0] = True, False
    assert paired_comparison(a, b)["p_value"] == pytest.approx(22 / 1024)
    assert paired_comparison(b, a)["p_value"] == pytest.approx(22 / 1024)
    assert paired_comparison(b, b) == {"difference": 0.0, "a_only": 0, "b_only": 0, "p_value": 1.0}
    # thousands of discordant samples do not overflow: a 1,000-image split of 10,000 is far off
    a, b = np.zeros(10_000, bool), np.zeros(10_000, bool)
    a[:4500], b[4500:10_000] = True, True
    assert paired_comparison(a, b)["p_value"] < 1e-15
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_comparison(a, b[:5])
