"""Metrics on hand arrays: accuracy and macro P/R/F1 (checked against scikit-learn's), McNemar."""
from __future__ import annotations

import numpy as np
import pytest

from oracle.metrics import classification_metrics, paired_comparison


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
