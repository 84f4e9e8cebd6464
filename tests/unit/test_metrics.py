"""Evaluation metrics against values computed by hand."""
import numpy as np
import pytest

from ablation.train.evaluate import best_f1, metrics


def test_auc_ap_f1_by_hand():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    # Pairs (anomaly, normal) ranked correctly: 0.35 beats 0.1, 0.2 (not 0.4); 0.8 and 0.9 beat all 3: 8/9.
    m = metrics(y, s)
    assert m["auc"] == pytest.approx(8 / 9)
    # Ranking 0.9(1) 0.8(1) 0.4(0) 0.35(1) ...: AP = (1 + 1 + 3/4) / 3.
    assert m["ap"] == pytest.approx((1 + 1 + 0.75) / 3)
    # Threshold 0.35: TP 3, FP 1, FN 0 -> F1 = 6/7; threshold 0.8: TP 2, FP 0, FN 1 -> 0.8.
    f1, thr = best_f1(y, s)
    assert f1 == pytest.approx(6 / 7) and thr == pytest.approx(0.35)


def test_per_class_auc_uses_normal_beats_and_that_class_only():
    y = np.array([0, 0, 1, 1])
    cls = np.array([0, 0, 1, 2])
    s = np.array([0.2, 0.4, 0.3, 0.9])
    m = metrics(y, s, cls)
    assert m["auc_S"] == pytest.approx(0.5) and m["auc_V"] == pytest.approx(1.0)
    assert "auc_F" not in m  # no F beats: no number


def test_single_class_is_an_error():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        metrics(np.zeros(3), np.arange(3.0))
