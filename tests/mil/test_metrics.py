import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from zoomfeat.mil.metrics import binary_metrics, corrected_paired_ttest, paired_comparison, summarize


def test_binary_metrics_match_hand_values_and_sklearn():
    y = [0, 0, 0, 0, 1, 1, 1]
    p = [0.1, 0.4, 0.6, 0.2, 0.8, 0.3, 0.9]
    m = binary_metrics(y, p)
    # by hand: predictions at 0.5 -> [0,0,1,0,1,0,1]; TN=3 FP=1 FN=1 TP=2
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # AUC by hand: positive/negative pairs ranked correctly: 0.8 beats 4, 0.3 beats 2 (0.1, 0.2), 0.9 beats 4 -> 10/12
    assert m["auc"] == pytest.approx(10 / 12)
    pred = (np.asarray(p) >= 0.5).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))


def test_binary_metrics_random_inputs_agree_with_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 50)
        p = rng.random(50)
        m = binary_metrics(y, p, threshold=0.3)
        pred = (p >= 0.3).astype(int)
        assert m == pytest.approx(
            {
                "auc": roc_auc_score(y, p),
                "balanced_accuracy": balanced_accuracy_score(y, pred),
                "f1": f1_score(y, pred),
                "accuracy": accuracy_score(y, pred),
            }
        )


def test_single_class_fold_has_nan_auc_and_bad_input_errors():
    m = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert math.isnan(m["auc"]) and m["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels but"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0.5, 0.5])


def test_summarize_t_interval():
    x = [0.8, 0.85, 0.9, 0.75, 0.95]
    s = summarize(x)
    half = stats.t.ppf(0.975, 4) * np.std(x, ddof=1) / math.sqrt(5)
    assert s["mean"] == pytest.approx(0.85) and s["n"] == 5
    assert s["std"] == pytest.approx(np.std(x, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((0.85 - half, 0.85 + half))
    assert summarize([0.7, float("nan")])["n"] == 1 and math.isnan(summarize([0.7])["ci_low"])


def test_summarize_clips_the_interval_to_the_metrics_range():
    # three folds, AUC 1.0, 1.0, 0.25: the raw t-interval is 0.75 +- 4.30 * 0.433 / sqrt(3) = [-0.33, 1.83]
    x = [1.0, 1.0, 0.25]
    half = stats.t.ppf(0.975, 2) * np.std(x, ddof=1) / math.sqrt(3)
    raw = summarize(x, bounds=None)
    assert (raw["ci_low"], raw["ci_high"]) == pytest.approx((0.75 - half, 0.75 + half))
    assert raw["ci_low"] < 0 and raw["ci_high"] > 1
    s = summarize(x)
    assert (s["ci_low"], s["ci_high"]) == (0.0, 1.0) and s["mean"] == pytest.approx(0.75)


def test_corrected_paired_ttest_and_wilcoxon():
    d = np.array([0.02, 0.05, -0.01, 0.04, 0.03, 0.06, 0.00, 0.02, 0.05, 0.01])
    ratio = 1 / 9  # 10-fold CV
    t, p = corrected_paired_ttest(d, ratio)
    t_hand = d.mean() / math.sqrt((1 / 10 + ratio) * d.var(ddof=1))
    assert t == pytest.approx(t_hand)
    assert p == pytest.approx(2 * stats.t.sf(abs(t_hand), 9))
    # the correction only ever makes the test more conservative than the plain paired t-test
    assert p > stats.ttest_1samp(d, 0).pvalue
    base = np.full(10, 0.8)
    res = paired_comparison(base + d, base, ratio)
    assert res["diff_mean"] == pytest.approx(d.mean())
    assert res["p_corrected_t"] == pytest.approx(p, rel=1e-6)
    assert res["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert (res["wins"], res["ties"], res["losses"]) == (8, 1, 1)
    same = paired_comparison(base, base, ratio)
    assert math.isnan(same["p_corrected_t"]) and math.isnan(same["p_wilcoxon"])
