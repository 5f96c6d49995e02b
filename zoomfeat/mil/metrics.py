"""Metrics for MIL benchmarks: per-fold scores, summaries and paired comparisons.

* :func:`binary_metrics` -- AUC, balanced accuracy, F1 and accuracy of one test fold
  (scikit-learn's definitions; the decision threshold is 0.5 on the predicted probability);
  :func:`multiclass_metrics` -- the same names for k > 2 classes: macro one-vs-rest AUC, balanced
  accuracy (mean recall), macro F1, accuracy (prediction = argmax).
* :func:`summarize` -- mean, sample standard deviation and a t-based 95% confidence interval
  of the mean over folds.
* :func:`paired_comparison` -- a feature set against a baseline over the *same* folds:
  the Nadeau-Bengio corrected resampled paired t-test (the variance of the fold differences
  is inflated by ``n_test / n_train`` because cross-validation training sets overlap; the
  plain paired t-test is too liberal there) and the Wilcoxon signed-rank test.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

#: metric names in the order they appear in every table (classification)
METRICS = ("auc", "balanced_accuracy", "f1", "accuracy")
#: the metrics of each task type (``task.type``), in table order
TASK_METRICS = {
    "classification": METRICS,
    "regression": ("r2", "pearson_r", "mae"),
    "survival": ("c_index", "c_index_uno"),
}
METRIC_LABELS = {
    "auc": "AUC",
    "balanced_accuracy": "Balanced accuracy",
    "f1": "F1",
    "accuracy": "Accuracy",
    "r2": "R²",
    "pearson_r": "Pearson r",
    "mae": "MAE",
    "c_index": "C-index (Harrell)",
    "c_index_uno": "C-index (Uno)",
}
#: the range of each metric (confidence intervals are clipped to it); None: unbounded
METRIC_BOUNDS: dict[str, tuple[float, float] | None] = {
    "auc": (0.0, 1.0),
    "balanced_accuracy": (0.0, 1.0),
    "f1": (0.0, 1.0),
    "accuracy": (0.0, 1.0),
    "r2": (-math.inf, 1.0),
    "pearson_r": (-1.0, 1.0),
    "mae": (0.0, math.inf),
    "c_index": (0.0, 1.0),
    "c_index_uno": (0.0, 1.0),
}
#: metrics where lower is better
LOWER_IS_BETTER = ("mae",)


def metric_columns(frame: Any) -> list[str]:
    """The metrics present as columns of ``frame`` (a folds table), in table order."""
    known = [m for ms in TASK_METRICS.values() for m in ms]
    return [m for m in known if m in frame.columns]


def r2_score(y: ArrayLike, pred: ArrayLike) -> float:
    """Coefficient of determination ``R^2 = 1 - sum (y - yhat)^2 / sum (y - mean y)^2`` (NaN for < 2
    values or a constant target)."""
    ya = np.asarray(y, dtype=np.float64)
    pa = np.asarray(pred, dtype=np.float64)
    ss_tot = float(((ya - ya.mean()) ** 2).sum()) if len(ya) > 1 else 0.0
    return float(1.0 - ((ya - pa) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def regression_metrics(y: ArrayLike, pred: ArrayLike) -> dict[str, float]:
    """R^2, Pearson's r and the mean absolute error ``mean |y - yhat|`` of one set of predictions."""
    ya = np.asarray(y, dtype=np.float64).ravel()
    pa = np.asarray(pred, dtype=np.float64).ravel()
    if ya.shape != pa.shape or len(ya) == 0:
        raise ValueError(f"{len(ya)} targets but {len(pa)} predictions")
    r = float("nan")
    if len(ya) > 2 and ya.std() > 0 and pa.std() > 0:
        r = float(np.corrcoef(ya, pa)[0, 1])
    return {"r2": r2_score(ya, pa), "pearson_r": r, "mae": float(np.abs(ya - pa).mean())}


def harrell_c(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's C-index (scikit-survival's ``concordance_index_censored``): the share of comparable
    pairs (``t_i < t_j``, ``i`` had the event) with ``risk_i > risk_j``, ties in risk counting 1/2.
    NaN without a comparable pair."""
    from sksurv.metrics import concordance_index_censored

    e = np.asarray(event, dtype=bool)
    if not e.any() or len(e) < 2:
        return float("nan")
    try:
        return float(
            concordance_index_censored(
                e, np.asarray(time, dtype=np.float64), np.asarray(risk, dtype=np.float64)
            )[0]
        )
    except (ValueError, ZeroDivisionError):
        return float("nan")


def survival_metrics(
    time: ArrayLike,
    event: ArrayLike,
    risk: ArrayLike,
    *,
    train_time: ArrayLike | None = None,
    train_event: ArrayLike | None = None,
) -> dict[str, float]:
    """Harrell's C-index and Uno's IPCW C-index (``concordance_index_ipcw``; the censoring
    distribution is the Kaplan-Meier estimate of the training bags, truncated at the largest
    training time; NaN when it cannot be estimated) of one test fold."""
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=bool)
    r = np.asarray(risk, dtype=np.float64)
    uno = float("nan")
    tt = t if train_time is None else np.asarray(train_time, dtype=np.float64)
    te = e if train_event is None else np.asarray(train_event, dtype=bool)
    if e.any() and te.any():
        keep = t < tt.max()
        try:
            uno = float(
                concordance_index_ipcw(Surv.from_arrays(te, tt), Surv.from_arrays(e[keep], t[keep]), r[keep])[
                    0
                ]
            )
        except (ValueError, ZeroDivisionError):
            uno = float("nan")
    return {"c_index": harrell_c(t, e, r), "c_index_uno": uno}


def binary_metrics(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """AUC, balanced accuracy, F1 (positive class 1) and accuracy of one set of predictions.

    AUC is NaN when ``y_true`` holds a single class (it is undefined there).
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_prob = np.asarray(y_prob, dtype=np.float64).ravel()
    if y_true.shape != y_prob.shape:
        raise ValueError(f"{len(y_true)} labels but {len(y_prob)} predictions")
    if len(y_true) == 0:
        raise ValueError("no predictions to score")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got {sorted(set(y_true.tolist()))}")
    y_pred = (y_prob >= threshold).astype(np.int64)
    auc = float(roc_auc_score(y_true, y_prob)) if len(np.unique(y_true)) == 2 else float("nan")
    with warnings.catch_warnings():
        # balanced accuracy of a one-class fold warns; the value is still well defined
        warnings.simplefilter("ignore", UserWarning)
        bacc = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "auc": auc,
        "balanced_accuracy": bacc,
        "f1": float(f1_score(y_true, y_pred, zero_division=0.0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }


def macro_ovr_auc(y_true: ArrayLike, probs: np.ndarray) -> float:
    """Macro one-vs-rest AUC of (n, k) class probabilities: the mean over classes ``c`` of the AUC
    of ``probs[:, c]`` for "class c vs the rest", over the classes that are present *and* absent
    somewhere in ``y_true`` (with every class present this is scikit-learn's
    ``roc_auc_score(multi_class="ovr", average="macro")``); NaN when no class qualifies."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    aucs = [
        float(roc_auc_score(y == c, p[:, c])) for c in range(p.shape[1]) if 0 < int((y == c).sum()) < len(y)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def multiclass_metrics(y_true: ArrayLike, probs: np.ndarray) -> dict[str, float]:
    """k-class scores of one test fold under the binary names (:data:`METRICS`): ``auc`` = macro
    one-vs-rest AUC (:func:`macro_ovr_auc`), ``balanced_accuracy`` = mean recall over the classes
    in ``y_true``, ``f1`` = macro F1 over all k classes, ``accuracy``; the prediction is the argmax."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"{len(y)} labels but predictions of shape {p.shape}")
    if len(y) == 0:
        raise ValueError("no predictions to score")
    pred = p.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bacc = float(balanced_accuracy_score(y, pred))
    return {
        "auc": macro_ovr_auc(y, p),
        "balanced_accuracy": bacc,
        "f1": float(f1_score(y, pred, labels=list(range(p.shape[1])), average="macro", zero_division=0.0)),
        "accuracy": float(accuracy_score(y, pred)),
    }


def summarize(
    values: Sequence[float], confidence: float = 0.95, bounds: tuple[float, float] | None = (0.0, 1.0)
) -> dict[str, float]:
    """Mean, std (ddof=1), t-based ``confidence`` interval of the mean, and n (NaNs dropped).

    The interval is ``mean +- t_{n-1} * std / sqrt(n)``, clipped to ``bounds`` (the metric's range:
    every MIL metric here lies in [0, 1]; with 3-5 folds the raw t-interval of an AUC near 1 or
    with a large spread can reach past 1 or below 0, which no AUC can). ``bounds=None``: unclipped.
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return {
            "mean": float("nan"),
            "std": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "n": 0,
        }
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 1}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "std": std, "ci_low": low, "ci_high": high, "n": n}


def corrected_paired_ttest(
    diffs: Sequence[float] | np.ndarray, test_train_ratio: float
) -> tuple[float, float]:
    """Nadeau & Bengio (2003) corrected resampled t-test on paired fold differences.

    ``t = mean(d) / sqrt((1/n + n_test/n_train) * var(d))`` with n-1 degrees of freedom.
    Returns (t, two-sided p); NaN when fewer than two differences or zero variance with zero mean.
    """
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    d = d[~np.isnan(d)]
    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    var = d.var(ddof=1)
    mean = d.mean()
    if var == 0:
        return (float("nan"), float("nan")) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / math.sqrt((1.0 / n + test_train_ratio) * var)
    p = 2 * float(stats.t.sf(abs(t), df=n - 1))
    return float(t), p


def paired_comparison(
    values: Sequence[float], baseline: Sequence[float], test_train_ratio: float
) -> dict[str, float]:
    """Compare a feature set with the baseline over the same folds (pairs with a NaN dropped).

    Returns ``diff_mean`` (set - baseline), ``t`` and ``p_corrected_t`` (Nadeau-Bengio),
    ``p_wilcoxon`` (two-sided signed-rank; NaN when every difference is zero), wins/ties/losses
    and ``n`` (pairs).
    """
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same folds: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    t, p_t = corrected_paired_ttest(d, test_train_ratio)
    p_w = float("nan")
    if len(d) >= 2 and np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_w = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return {
        "diff_mean": float(d.mean()) if len(d) else float("nan"),
        "t": t,
        "p_corrected_t": p_t,
        "p_wilcoxon": p_w,
        "wins": int((d > 0).sum()),
        "ties": int((d == 0).sum()),
        "losses": int((d < 0).sum()),
        "n": int(len(d)),
    }
