"""Overlap matrices on a hand table where the pooled figure differs from every label's."""
from __future__ import annotations

import numpy as np
import pytest

from common.tables import PredictionTable
from oracle.overlap import overlap_matrices


def make_table(labels, correct, n_classes, names) -> PredictionTable:
    labels = np.asarray(labels, dtype=np.int64)
    correct = np.asarray(correct, dtype=bool)
    preds = np.where(correct, labels[:, None], (labels[:, None] + 1) % n_classes)
    probs = np.zeros((len(labels), len(names), n_classes), dtype=np.float16)
    return PredictionTable(names, labels, preds, probs, np.arange(len(labels)), "val")


# models: s (strong), w (weak), z (never right). Listed strong first on purpose.
#            s  w  z
ROWS = [(0, [1, 1, 0]),
        (0, [1, 1, 0]),
        (1, [1, 0, 0]),
        (1, [1, 0, 0]),
        (1, [1, 0, 0])]
# label 0: w gets both of s's 2 right -> 100 %.  label 1: w gets none of s's 3 -> 0 %.
# pooled: |w & s| = 2, |s| = 5 -> 40 %, which is neither label's figure nor their mean (50).


@pytest.fixture
def ov():
    t = make_table([l for l, _ in ROWS], [c for _, c in ROWS], 3, ["s", "w", "z"])
    return overlap_matrices(t)


def test_total_is_pooled_not_per_label(ov):
    s, w, z = 0, 1, 2
    assert ov.total[w, s] == pytest.approx(40.0)
    assert ov.per_label[0, w, s] == pytest.approx(100.0)
    assert ov.per_label[1, w, s] == pytest.approx(0.0)
    assert ov.total[s, w] == pytest.approx(100.0)          # s gets all of w's 2 right
    assert ov.both_total[w, s] == 2 and ov.correct_total.tolist() == [5, 2, 0]


def test_never_right_model_gives_nan_column_and_zero_row(ov):
    s, w, z = 0, 1, 2
    assert np.isnan(ov.total[:, z]).all()
    assert ov.total[z, s] == 0.0 and ov.total[z, w] == 0.0
    # label 1: w is never right there -> its column is NaN within label 1 only
    assert np.isnan(ov.per_label[1, :, w]).all()
    assert ov.per_label[0, s, w] == pytest.approx(100.0)
    # label 2 is absent: every column NaN
    assert np.isnan(ov.per_label[2]).all()
    assert ov.samples_per_label.tolist() == [2, 3, 0]


def test_diagonal_is_100_where_defined(ov):
    d = np.diag(ov.total)
    assert d[0] == 100.0 and d[1] == 100.0 and np.isnan(d[2])


def test_weak_to_strong_order_and_pair_rows(ov):
    assert ov.weak_to_strong() == [2, 1, 0]                 # z, w, s
    o = ov.ordered()
    assert o.model_names == ["z", "w", "s"]
    assert o.total[1, 2] == pytest.approx(40.0)             # w of s, after reordering
    assert o.per_label[0, 1, 2] == pytest.approx(100.0)
    rows = ov.pair_rows()
    # 3 pairs (z<w, z<s, w<s) x (pooled + 3 labels) = 12 rows
    assert len(rows) == 12
    ws = [r for r in rows if r["weaker"] == "w" and r["stronger"] == "s"]
    assert [(r["label"], r["percent"]) for r in ws][:3] == [("all", 40.0), (0, 100.0), (1, 0.0)]
    assert ws[0]["both_correct"] == 2 and ws[0]["stronger_correct"] == 5


def test_random_table_matches_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    correct = rng.random((40, 4)) < 0.6
    t = make_table(labels, correct, 3, list("abcd"))
    ov = overlap_matrices(t)
    for i in range(4):
        for j in range(4):
            want = 100 * (correct[:, i] & correct[:, j]).sum() / correct[:, j].sum()
            assert ov.total[i, j] == pytest.approx(want)
            for c in range(3):
                r = labels == c
                want = 100 * (correct[r, i] & correct[r, j]).sum() / correct[r, j].sum()
                assert ov.per_label[c, i, j] == pytest.approx(want)


def test_empty_table_is_refused():
    t = PredictionTable(["a"], np.zeros(0), np.zeros((0, 1)), np.zeros((0, 1, 2)),
                        np.zeros(0), "val")
    with pytest.raises(ValueError, match="no samples"):
        overlap_matrices(t)
