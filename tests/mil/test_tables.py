"""zoomfeat.mil.tables: the summary interval is the t-interval, rows follow the configured order,
and the per-class table and confusion matrix count a hand-made prediction table exactly."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from zoomfeat.mil.metrics import METRICS
from zoomfeat.mil.tables import class_tables, ordered_sets, summary_table


def test_summary_is_the_t_interval_in_the_configured_order():
    aucs = {"b": [0.70, 0.75, 0.80, 0.72], "a": [0.90, 0.85, 0.88, 0.93]}
    folds = pd.DataFrame(
        [{"feature_set": fs, "repeat": 0, "fold": f, **dict.fromkeys(METRICS, v)}
         for fs, vals in aucs.items() for f, v in enumerate(vals)]
    )  # fmt: skip
    assert ordered_sets(folds, None) == ["b", "a"]
    assert ordered_sets(folds, ["a", "zz"]) == ["a", "b"]  # configured first, then the rest
    table = summary_table(folds, ["a"])
    assert table["feature_set"].tolist() == ["a"] * len(METRICS) + ["b"] * len(METRICS)
    row = table[(table["feature_set"] == "a") & (table["metric"] == "auc")].iloc[0]
    x = np.asarray(aucs["a"])
    half = stats.t.ppf(0.975, df=3) * x.std(ddof=1) / np.sqrt(4)
    # the same float64 formula on 4 values of ~0.9: rounding ~1e-16, far inside abs=1e-12
    assert row["mean"] == pytest.approx(x.mean(), abs=1e-12) and row["n"] == 4
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half), abs=1e-12)


def test_class_tables_count_a_hand_made_prediction_table():
    from sklearn.metrics import roc_auc_score

    # 3 classes, 6 slides: true labels and predicted classes chosen so every count is known
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 6)
    predictions = pd.DataFrame(
        {"feature_set": "s", "label": y, "pred": pred, "prob": probs.max(1),
         **{f"prob_{c}": probs[:, c] for c in range(3)}}
    )  # fmt: skip
    per_class, confusion = class_tables(predictions, ["A", "B", "C"])
    assert per_class["n"].tolist() == [2, 2, 2]
    # recall: A 1/2, B 2/2, C 1/2; precision: A 1/2 (pred A: slides 0, 5), B 2/3, C 1/1
    assert per_class["recall"].tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert per_class["precision"].tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    for c in range(3):  # the same sklearn call on the same float64 scores: equal (abs 1e-12 is slack only)
        ref = roc_auc_score(np.asarray(y) == c, probs[:, c])
        assert per_class["auc_ovr"].iloc[c] == pytest.approx(ref, abs=1e-12)
    matrix = confusion[["pred A", "pred B", "pred C"]].to_numpy()
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert confusion["true"].tolist() == ["A", "B", "C"]
