"""The report's numbers: summary, paired and per-class tables over folds and predictions.

* :func:`summary_table`: per feature set and metric, the mean over the F test folds, the sample
  std ``s`` and the t-based 95% interval ``mean +- t_{0.975, F-1} s / sqrt(F)`` clipped to [0, 1]
  (:func:`zoomfeat.mil.metrics.summarize`);
* :func:`paired_table`: each set against the baseline over the folds both ran (same slides, same
  seed): mean difference, the Nadeau-Bengio corrected resampled t-test, whose variance
  ``(1/F + n_test/n_train) s_d^2`` accounts for the overlap of cross-validation training sets
  (``n_train`` here counts the training and validation bags a fold learns from), and the
  Wilcoxon signed-rank test (:func:`zoomfeat.mil.metrics.paired_comparison`);
* :func:`class_tables`: per class recall, precision, F1 and one-vs-rest AUC of the pooled
  out-of-fold predictions, and the confusion matrix (with repeats every slide counts once per
  repeat).

Rows follow the configured feature-set order (:func:`ordered_sets`). The files that hold these
tables are written by :mod:`zoomfeat.mil.report`; the paper table (:mod:`zoomfeat.mil.presets`)
reads the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from zoomfeat.mil.metrics import METRIC_BOUNDS, metric_columns, paired_comparison, summarize

SUMMARY_COLUMNS = ("feature_set", "metric", "mean", "std", "ci_low", "ci_high", "n")


def ordered_sets(frame: pd.DataFrame, feature_sets: Sequence[str] | None) -> list[str]:
    """The feature sets present in ``frame`` (a ``feature_set`` column): those of ``feature_sets``
    first in that order, then the others in order of appearance (all of them when None)."""
    present = list(dict.fromkeys(frame["feature_set"]))
    if feature_sets is None:
        return present
    return [fs for fs in feature_sets if fs in present] + [fs for fs in present if fs not in feature_sets]


def summary_table(folds: pd.DataFrame, feature_sets: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, std and 95% CI over folds of every metric for every feature set.

    Args:
        folds: one row per (feature_set, repeat, fold) with a column per metric (``folds.csv``).
        feature_sets: the row order (:func:`ordered_sets`).

    Returns:
        One row per (set, metric): :data:`SUMMARY_COLUMNS`.
    """
    rows = []
    for fs in ordered_sets(folds, feature_sets):
        frame = folds[folds["feature_set"] == fs]
        for metric in metric_columns(folds):  # the task's metrics (classification: METRICS)
            values = frame[metric].to_numpy()
            rows.append(
                {"feature_set": fs, "metric": metric, **summarize(values, bounds=METRIC_BOUNDS[metric])}
            )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def paired_table(
    folds: pd.DataFrame, baseline: str, feature_sets: Sequence[str] | None = None
) -> pd.DataFrame:
    """Every other feature set against ``baseline`` over the folds both were run on.

    Args:
        folds: as :func:`summary_table`, plus ``n_train``, ``n_val``, ``n_test`` (the corrected
            t-test's ratio is the mean of ``n_test / (n_train + n_val)`` over the common folds).
        baseline: the reference set; absent from ``folds``: an empty table.
        feature_sets: the row order.

    Returns:
        One row per (set, metric): diff_mean, t, p_corrected_t, p_wilcoxon, wins/ties/losses, n.
    """
    columns = [
        "feature_set",
        "baseline",
        "metric",
        "diff_mean",
        "t",
        "p_corrected_t",
        "p_wilcoxon",
        "wins",
        "ties",
        "losses",
        "n",
    ]
    if baseline not in set(folds["feature_set"]):
        return pd.DataFrame(columns=columns)
    base = folds[folds["feature_set"] == baseline].set_index(["repeat", "fold"])
    rows = []
    for fs in ordered_sets(folds, feature_sets):
        if fs == baseline:
            continue
        other = folds[folds["feature_set"] == fs].set_index(["repeat", "fold"])
        common = base.index.intersection(other.index)
        ratio = (
            float(
                (
                    other.loc[common, "n_test"] / (other.loc[common, "n_train"] + other.loc[common, "n_val"])
                ).mean()
            )
            if len(common)
            else float("nan")
        )
        for metric in metric_columns(folds):
            stats = paired_comparison(
                other.loc[common, metric].to_numpy(), base.loc[common, metric].to_numpy(), ratio
            )
            rows.append({"feature_set": fs, "baseline": baseline, "metric": metric, **stats})
    return pd.DataFrame(rows, columns=columns)


def class_probabilities(pred: pd.DataFrame, n_classes: int) -> np.ndarray:
    """(n, k) class probabilities of prediction rows: ``prob_{c}`` columns (k > 2), or
    ``[1 - prob, prob]`` for a binary task (``prob`` is P(class 1)).

    Args:
        pred: prediction rows (``predictions.csv``).
        n_classes: k.

    Returns:
        (n, k) float64.
    """
    if n_classes > 2:
        return pred[[f"prob_{c}" for c in range(n_classes)]].to_numpy(dtype=np.float64)
    p1 = pred["prob"].to_numpy(dtype=np.float64)
    return np.stack([1 - p1, p1], axis=1)


def class_tables(
    predictions: pd.DataFrame, class_names: Sequence[str], feature_sets: Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class table and confusion matrix of the pooled out-of-fold predictions of each set.

    Per class: test bags ``n``, recall (sensitivity), precision, F1 and the one-vs-rest AUC of the
    pooled probabilities. Confusion: one row per (set, true class), a column per predicted class
    (counts; with repeats every slide is counted once per repeat).

    Args:
        predictions: prediction rows of every set (``predictions.csv``).
        class_names: the k class names, index = label.
        feature_sets: the row order.

    Returns:
        ``(per_class, confusion)`` tables.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    k = len(class_names)
    per_class, confusion = [], []
    for fs in ordered_sets(predictions, feature_sets):
        pred = predictions[predictions["feature_set"] == fs]
        y = pred["label"].to_numpy(dtype=np.int64)
        yhat = pred["pred"].to_numpy(dtype=np.int64)
        probs = class_probabilities(pred, k)
        prec, rec, f1, n = precision_recall_fscore_support(y, yhat, labels=list(range(k)), zero_division=0.0)
        for c in range(k):
            pos = y == c
            auc = float(roc_auc_score(pos, probs[:, c])) if 0 < pos.sum() < len(y) else float("nan")
            per_class.append(
                {"feature_set": fs, "class": c, "name": class_names[c], "n": int(n[c]),
                 "recall": float(rec[c]), "precision": float(prec[c]), "f1": float(f1[c]), "auc_ovr": auc}
            )  # fmt: skip
        matrix = confusion_matrix(y, yhat, labels=list(range(k)))
        for c in range(k):
            confusion.append(
                {"feature_set": fs, "true": class_names[c], **{f"pred {class_names[j]}": int(matrix[c, j]) for j in range(k)}}
            )  # fmt: skip
    return pd.DataFrame(per_class), pd.DataFrame(confusion)
