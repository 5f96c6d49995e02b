"""Statistics beyond the fold table: seeds, patient-level bootstrap, DeLong, Holm, plain words.

Everything here reads the benchmark's ``folds`` rows (one per feature set, aggregator, seed and
fold) and ``predictions`` rows (out-of-fold test predictions, :mod:`zoomfeat.mil.fold_loop`):

* :func:`delong_test` -- DeLong's test for two correlated AUCs on the same slides, with the fast
  algorithm of Sun & Xu (2014) (midranks; equations in its docstring);
* :func:`holm` -- Holm's step-down adjustment of p-values for several comparisons with one baseline;
* :func:`bootstrap_ci` -- percentile intervals over patient-level bootstrap resamples of pooled
  out-of-fold predictions (patients, not slides, are resampled: slides of one patient are not
  independent);
* :func:`seed_table` -- per aggregator and set, the cross-validated mean of each metric for each
  seed, and their spread across seeds (the run-to-run noise of training);
* :func:`paired_cells` -- every (set, aggregator) cell against the baseline set under the same
  aggregator: the corrected t-test and Wilcoxon over seed-averaged folds
  (:func:`zoomfeat.mil.tables.paired_table`), DeLong on pooled predictions (binary AUC), Holm
  adjustments, and the difference's spread across seeds;
* :func:`write_statistics` -- the files below, and plain-word sentences for ``summary.md``.

Files (stable columns; the HTML report reads them):

* ``folds_by_seed.csv``: the fold rows of every seed (``folds.csv`` holds their mean per fold);
* ``seeds.csv``: ``aggregator, feature_set, metric, seed_mean, seed_sd, seed_min, seed_max,
  n_seeds`` (CV mean per seed, then across seeds);
* ``bootstrap.csv``: ``aggregator, feature_set, metric, estimate, ci_low, ci_high, n_boot,
  n_patients`` (pooled out-of-fold predictions, averaged per slide over seeds and repeats);
* ``paired.csv``: ``feature_set, baseline, metric, diff_mean, t, p_corrected_t, p_wilcoxon, wins,
  ties, losses, n`` (as :func:`~zoomfeat.mil.tables.paired_table`), then ``aggregator, auc,
  auc_baseline, p_delong, p_holm_t, p_holm_wilcoxon, p_holm_delong, diff_seed_sd,
  beyond_seed_noise``;
* survival: ``km.csv`` (``aggregator, feature_set, group, time, survival``: Kaplan-Meier curves of
  the predicted risk groups), ``logrank.csv`` (``aggregator, feature_set, groups, chi2, p``) and
  ``km.png``; regression: ``scatter.png`` (predicted vs true);
* ``statistics.md``: the tables above and one sentence per comparison saying whether the
  difference is larger than the seed noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from zoomfeat.mil.metrics import LOWER_IS_BETTER, METRIC_LABELS, TASK_METRICS, metric_columns, r2_score
from zoomfeat.mil.tables import ordered_sets, paired_table

KEYS = ["aggregator", "feature_set"]


# ---------------------------------------------------------------------------------------- DeLong
def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing their mean rank (midranks)."""
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def delong_test(y: ArrayLike, score_a: ArrayLike, score_b: ArrayLike) -> dict[str, float]:
    """DeLong's test that two correlated AUCs on the same bags are equal (fast DeLong, Sun & Xu 2014).

    With m positives ``X`` and n negatives ``Y`` and a classifier's scores, the AUC is the
    Mann-Whitney statistic ``A = (1/mn) sum_i sum_j psi(X_i, Y_j)``, ``psi = 1`` if ``X_i > Y_j``,
    ``1/2`` if equal, else 0. Its structural components come from midranks: with ``T_Z`` the
    midranks among all m + n scores, ``T_X`` among the positives and ``T_Y`` among the negatives,

        A     = (sum_i T_Z(X_i) - m (m + 1) / 2) / (m n)
        V10_i = (T_Z(X_i) - T_X(X_i)) / n            (i = 1..m)
        V01_j = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m        (j = 1..n)

    For the two classifiers a, b: ``S10``, ``S01`` are the 2 x 2 sample covariances of the V10 and
    V01 vectors, ``S = S10 / m + S01 / n``, and

        z = (A_a - A_b) / sqrt(S_aa + S_bb - 2 S_ab),    p = 2 (1 - Phi(|z|)).

    Args:
        y: (N,) 0/1 labels; score_a, score_b: (N,) the two classifiers' scores.

    Returns:
        ``auc_a``, ``auc_b``, ``diff`` (a - b), ``se``, ``z`` and the two-sided ``p`` (NaN with one
        class; p = 1 when the two score vectors rank every pair alike).
    """
    from scipy.stats import norm

    yv = np.asarray(y, dtype=np.int64).ravel()
    scores = np.vstack(
        [np.asarray(score_a, dtype=np.float64).ravel(), np.asarray(score_b, dtype=np.float64).ravel()]
    )
    pos, neg = yv == 1, yv == 0
    m, n = int(pos.sum()), int(neg.sum())
    nan = float("nan")
    if m == 0 or n == 0:
        return {"auc_a": nan, "auc_b": nan, "diff": nan, "se": nan, "z": nan, "p": nan}
    aucs, v10, v01 = [], [], []
    for s in scores:
        tz = _midranks(s)
        tx, ty = _midranks(s[pos]), _midranks(s[neg])
        aucs.append((tz[pos].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[pos] - tx) / n)
        v01.append(1.0 - (tz[neg] - ty) / m)
    s10 = np.cov(np.vstack(v10)) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack(v01)) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = float(2 * norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": math.sqrt(max(var, 0.0)),
            "z": float(z), "p": p}  # fmt: skip


# ------------------------------------------------------------------------------------------ Holm
def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaNs kept out of the family and returned as NaN).

    Sorted ascending ``p_(1) <= ... <= p_(m)``: ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``.
    Controls the family-wise error rate for any dependence between the tests.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# ------------------------------------------------------------------------------------- metrics
def fast_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC from midranks (Mann-Whitney; ties count 1/2); NaN with one class."""
    y = np.asarray(y).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return float("nan")
    r = _midranks(np.asarray(s, dtype=np.float64))
    return float((r[y].sum() - m * (m + 1) / 2) / (m * n))


def fast_harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index with scikit-survival's rules (pairs ``t_i < t_j``, or equal times with only
    ``i`` an event, are comparable when ``i`` had the event; risk ties count 1/2), vectorised for
    bootstrap resamples. NaN without a comparable pair."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    r = np.asarray(risk, dtype=np.float64)
    comp = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :]))
    total = comp.sum()
    if total == 0:
        return float("nan")
    conc = (comp & (r[:, None] > r[None, :])).sum() + 0.5 * (comp & (r[:, None] == r[None, :])).sum()
    return float(conc / total)


def pooled_metrics(task_type: str) -> dict[str, Callable[[pd.DataFrame], float]]:
    """The metrics computed on pooled out-of-fold predictions (a frame of predictions.csv rows)."""
    if task_type == "regression":

        def _r(f: pd.DataFrame) -> float:
            y, p = f["target"].to_numpy(float), f["pred"].to_numpy(float)
            return (
                float(np.corrcoef(y, p)[0, 1]) if len(y) > 2 and y.std() > 0 and p.std() > 0 else float("nan")
            )

        return {
            "r2": lambda f: r2_score(f["target"].to_numpy(float), f["pred"].to_numpy(float)),
            "pearson_r": _r,
            "mae": lambda f: float(np.abs(f["target"].to_numpy(float) - f["pred"].to_numpy(float)).mean()),
        }
    if task_type == "survival":
        return {
            "c_index": lambda f: fast_harrell_c(
                f["time"].to_numpy(), f["event"].to_numpy(), f["risk"].to_numpy()
            )
        }

    def _bacc(f: pd.DataFrame) -> float:
        y, pred = f["label"].to_numpy(int), f["pred"].to_numpy(int)
        recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
        return float(np.mean(recalls)) if recalls else float("nan")

    def _auc(f: pd.DataFrame) -> float:
        probs = [c for c in f.columns if c.startswith("prob_")]
        y = f["label"].to_numpy(int)
        if probs and f[probs].notna().all().all():  # k classes: macro one-vs-rest
            aucs = [fast_auc(y == k, f[f"prob_{k}"].to_numpy(float)) for k in range(len(probs))]
            aucs = [a for a in aucs if not math.isnan(a)]
            return float(np.mean(aucs)) if aucs else float("nan")
        return fast_auc(y, f["prob"].to_numpy(float))

    return {
        "auc": _auc,
        "balanced_accuracy": _bacc,
        "accuracy": lambda f: float((f["label"] == f["pred"]).mean()),
    }


def pooled_predictions(predictions: pd.DataFrame, task_type: str) -> pd.DataFrame:
    """One row per (aggregator, feature set, slide): the mean prediction over seeds and repeats
    (probabilities, ``pred`` for regression, ``risk``), so every slide counts once. Survival risks
    are standardised within each test fold first, ``(r - mean_fold) / sd_fold`` (each fold's Cox
    model has its own offset and scale)."""
    frame = predictions.copy()
    if "aggregator" not in frame:
        frame["aggregator"] = ""
    frame["aggregator"] = frame["aggregator"].fillna("")
    group = [*KEYS, "slide_id"]
    if task_type == "regression":
        agg = {"case_id": "first", "target": "first", "pred": "mean"}
    elif task_type == "survival":
        # a Cox model's log-risk has an arbitrary offset and scale per trained model: standardise it
        # within each test fold before pooling, so risks of different folds are comparable
        fold_keys = [c for c in (*KEYS, "seed", "repeat", "fold") if c in frame]
        g = frame.groupby(fold_keys, sort=False)["risk"]
        frame["risk"] = (frame["risk"] - g.transform("mean")) / g.transform("std").replace(0, 1).fillna(1)
        agg = {"case_id": "first", "time": "first", "event": "first", "risk": "mean"}
    else:
        probs = [c for c in frame.columns if c.startswith("prob")]
        agg = {"case_id": "first", "label": "first", **{c: "mean" for c in probs}}
    out = frame.groupby(group, sort=False).agg(agg).reset_index()
    if task_type == "classification":
        k = [c for c in out.columns if c.startswith("prob_")]
        if k and out[k].notna().all().all():
            out["pred"] = out[k].to_numpy(float).argmax(1)
        else:
            out["pred"] = (out["prob"] >= 0.5).astype(int)
    return out


def bootstrap_ci(
    frame: pd.DataFrame,
    metric: Callable[[pd.DataFrame], float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Percentile interval of ``metric`` over patient-level bootstrap resamples of ``frame``.

    Each resample draws as many patients (``case_id``) as there are, with replacement, and keeps
    all their slides; the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of the resampled values (resamples where the metric is undefined, e.g. one class,
    are left out).

    Returns:
        ``estimate`` (on ``frame``), ``ci_low``, ``ci_high``, ``n_boot`` (valid resamples),
        ``n_patients``.
    """
    cases = frame["case_id"].astype(str).to_numpy()
    uniq, inverse = np.unique(cases, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        v = metric(frame.iloc[np.concatenate([rows_of[k] for k in pick])])
        if not math.isnan(v):
            values.append(v)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha]) if values else (float("nan"), float("nan"))
    return {"estimate": metric(frame), "ci_low": float(low), "ci_high": float(high), "n_boot": len(values),
            "n_patients": len(uniq)}  # fmt: skip


# ------------------------------------------------------------------------------------- seeds
def seed_average(folds: pd.DataFrame) -> pd.DataFrame:
    """``folds.csv``: per (aggregator, feature set, repeat, fold) the mean over seeds of every
    numeric column, with ``seeds`` = how many seeds ran that fold."""
    frame = folds.copy()
    if "aggregator" not in frame:
        frame["aggregator"] = ""
    if "seed" not in frame:
        frame["seed"] = 0
    keys = [*KEYS, "repeat", "fold"]
    numeric = [
        c for c in frame.columns if c not in keys and c != "seed" and pd.api.types.is_numeric_dtype(frame[c])
    ]
    out = frame.groupby(keys, sort=False)[numeric].mean().reset_index()
    out["seeds"] = frame.groupby(keys, sort=False)["seed"].nunique().to_numpy()
    for c in ("n_train", "n_val", "n_test", "best_epoch", "epochs_run"):
        if c in out:
            out[c] = out[c].round().astype(int) if c.startswith("n_") else out[c]
    return out


def seed_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Per aggregator, set and metric: the CV mean of each seed, then their mean, sample SD, min
    and max across seeds (``seeds.csv``)."""
    metrics = metric_columns(folds)
    per_seed = folds.groupby([*KEYS, "seed"], sort=False)[metrics].mean().reset_index()
    rows = []
    for (agg, fs), frame in per_seed.groupby(KEYS, sort=False):
        for m in metrics:
            v = frame[m].dropna().to_numpy(float)
            rows.append({"aggregator": agg, "feature_set": fs, "metric": m,
                         "seed_mean": float(v.mean()) if len(v) else float("nan"),
                         "seed_sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                         "seed_min": float(v.min()) if len(v) else float("nan"),
                         "seed_max": float(v.max()) if len(v) else float("nan"), "n_seeds": len(v)})  # fmt: skip
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ paired
def paired_cells(
    folds: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    baseline: str,
    task_type: str,
    feature_sets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every (set, aggregator) against ``baseline`` under the same aggregator (``paired.csv``).

    Args:
        folds: fold rows of every seed (``aggregator``, ``seed`` columns).
        predictions: prediction rows of every seed.
        baseline: the reference set.
        task_type: ``task.type``.
        feature_sets: the row order.

    Returns:
        :func:`~zoomfeat.mil.tables.paired_table`'s columns over seed-averaged folds, then
        ``aggregator``, DeLong (binary AUC on pooled predictions), Holm-adjusted p-values (one family
        per metric and test: every set x aggregator compared with the baseline), the SD across seeds
        of the set-minus-baseline CV mean, and whether ``|diff_mean|`` exceeds twice that SD.
    """
    avg = seed_average(folds)
    frame_all = folds if "aggregator" in folds else folds.assign(aggregator="")
    pooled = pooled_predictions(predictions, task_type) if len(predictions) else predictions
    binary = task_type == "classification" and not any(c.startswith("prob_") for c in predictions.columns)
    tables = []
    for agg, sub in avg.groupby("aggregator", sort=False):
        table = paired_table(sub, baseline, feature_sets)
        if table.empty:
            continue
        table.insert(0, "aggregator", agg)
        per_seed = (
            frame_all[frame_all["aggregator"] == agg]
            .groupby(["feature_set", "seed"])[metric_columns(sub)]
            .mean()
        )
        extra: list[dict[str, Any]] = []
        for _, row in table.iterrows():
            fs, m = row["feature_set"], row["metric"]
            info: dict[str, Any] = {"auc": np.nan, "auc_baseline": np.nan, "p_delong": np.nan}
            if binary and m == "auc" and len(pooled):
                a = pooled[(pooled["aggregator"] == agg) & (pooled["feature_set"] == fs)].set_index(
                    "slide_id"
                )
                b = pooled[(pooled["aggregator"] == agg) & (pooled["feature_set"] == baseline)].set_index(
                    "slide_id"
                )
                common = a.index.intersection(b.index)
                if len(common):
                    d = delong_test(a.loc[common, "label"], a.loc[common, "prob"], b.loc[common, "prob"])
                    info.update(auc=d["auc_a"], auc_baseline=d["auc_b"], p_delong=d["p"])
            try:
                diffs = (per_seed.loc[fs, m] - per_seed.loc[baseline, m]).dropna()
                info["diff_seed_sd"] = float(diffs.std(ddof=1)) if len(diffs) > 1 else np.nan
            except KeyError:
                info["diff_seed_sd"] = np.nan
            sd = info["diff_seed_sd"]
            info["beyond_seed_noise"] = bool(abs(row["diff_mean"]) > 2 * sd) if not math.isnan(sd) else None
            extra.append(info)
        tables.append(pd.concat([table.reset_index(drop=True), pd.DataFrame(extra)], axis=1))
    if not tables:
        return pd.DataFrame()
    out = pd.concat(tables, ignore_index=True)
    for test in ("t", "wilcoxon", "delong"):
        col = "p_corrected_t" if test == "t" else f"p_{test}"
        out[f"p_holm_{test}"] = np.nan
        for _, idx in out.groupby("metric").groups.items():
            out.loc[idx, f"p_holm_{test}"] = holm(out.loc[idx, col].to_numpy(float))
    lead = ["feature_set", "baseline", "metric", "diff_mean", "t", "p_corrected_t", "p_wilcoxon", "wins", "ties",
            "losses", "n", "aggregator"]  # fmt: skip
    return out[lead + [c for c in out.columns if c not in lead]]


def _p(p: float) -> str:
    return (
        "–"
        if p is None or (isinstance(p, float) and math.isnan(p))
        else ("<0.001" if p < 0.001 else f"{p:.3f}")
    )


def plain_words(paired: pd.DataFrame, main_metric: str, n_seeds: int) -> list[str]:
    """One sentence per (set, aggregator) on the main metric: the difference, the tests, and whether
    it is larger than the seed noise (twice the SD across seeds of the difference)."""
    lines = []
    label = METRIC_LABELS.get(main_metric, main_metric)
    better = "lower" if main_metric in LOWER_IS_BETTER else "higher"
    for _, r in paired[paired["metric"] == main_metric].iterrows():
        agg = f" under {r['aggregator']}" if r.get("aggregator") else ""
        tests = f"corrected t p={_p(r['p_corrected_t'])} (Holm {_p(r['p_holm_t'])})"
        if not math.isnan(r.get("p_delong", np.nan)):
            tests += f", DeLong p={_p(r['p_delong'])} (Holm {_p(r['p_holm_delong'])})"
        sd = r.get("diff_seed_sd", np.nan)
        if n_seeds < 2 or sd is None or math.isnan(sd):
            noise = f"the seed noise is unknown with {n_seeds} seed (run seeds=[0,1,2] to measure it)"
        elif abs(r["diff_mean"]) > 2 * sd:
            noise = f"this is larger than the seed noise (the difference varies by SD {sd:.3f} across {n_seeds} seeds)"
        else:
            noise = (
                f"this is within the seed noise (the difference varies by SD {sd:.3f} across {n_seeds} seeds)"
            )
        lines.append(
            f"{r['feature_set']} vs {r['baseline']}{agg}: {label} {r['diff_mean']:+.3f} ({better} is better; {tests}); {noise}."
        )
    return lines


# ------------------------------------------------------------------------------------ curves
def km_tables(pooled: pd.DataFrame, groups: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kaplan-Meier curves of predicted-risk groups (quantiles of the pooled risk; group 0 = lowest
    risk) per aggregator and set, and the log-rank test across the groups (scikit-survival's
    ``kaplan_meier_estimator`` and ``compare_survival``)."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.util import Surv

    curves, tests = [], []
    for (agg, fs), f in pooled.groupby(KEYS, sort=False):
        risk = f["risk"].to_numpy(float)
        edges = np.quantile(risk, np.linspace(0, 1, groups + 1)[1:-1])
        g = np.searchsorted(edges, risk, side="right")
        t, e = f["time"].to_numpy(float), f["event"].to_numpy(int).astype(bool)
        for k in np.unique(g):
            tk, sk = kaplan_meier_estimator(e[g == k], t[g == k])
            curves += [{"aggregator": agg, "feature_set": fs, "group": int(k), "time": float(a), "survival": float(b)}
                       for a, b in zip(tk, sk)]  # fmt: skip
        chi2, p = float("nan"), float("nan")
        if len(np.unique(g)) > 1 and e.any():
            try:
                chi2, p = compare_survival(Surv.from_arrays(e, t), g)
                chi2, p = float(chi2), float(p)
            except ValueError:
                pass
        tests.append(
            {"aggregator": agg, "feature_set": fs, "groups": int(len(np.unique(g))), "chi2": chi2, "p": p}
        )
    return pd.DataFrame(curves), pd.DataFrame(tests)


def _plot_grid(
    cells: list[tuple[str, str]], path: Path, draw: Callable[[Any, str, str], None], title: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from zoomfeat.runtime.atomic import atomic_path

    cols = min(4, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (agg, fs) in zip(axes.ravel(), cells):
        draw(ax, agg, fs)
        ax.set_title(f"{fs}{' · ' + agg if agg else ''}", fontsize=9)
    for ax in axes.ravel()[len(cells) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------- files
def write_statistics(
    out_dir: str | Path,
    folds: pd.DataFrame,
    *,
    predictions: pd.DataFrame,
    baseline: str | None,
    task_type: str,
    n_boot: int = 1000,
    risk_groups: int = 2,
    feature_sets: Sequence[str] | None = None,
    title: str = "",
) -> tuple[dict[str, Path], str]:
    """Write the files of the module docstring into ``out_dir``.

    Args:
        out_dir: the run's (staging) directory.
        folds: fold rows of every seed; predictions: prediction rows of every seed.
        baseline: the reference set (None: no paired comparisons).
        task_type: ``task.type``.
        n_boot: bootstrap resamples (0: none).
        risk_groups: survival: Kaplan-Meier groups.
        feature_sets: the row order.
        title: the plots' title.

    Returns:
        ``({name: path}, markdown)``: the files, and the statistics section for ``summary.md``.
    """
    from zoomfeat.mil.report import write_csv
    from zoomfeat.runtime.atomic import atomic_write_text

    out = Path(out_dir)
    paths: dict[str, Path] = {}
    folds = (
        folds.assign(aggregator=folds["aggregator"].fillna(""))
        if "aggregator" in folds
        else folds.assign(aggregator="")
    )
    folds = folds if "seed" in folds else folds.assign(seed=0)
    n_seeds = int(folds["seed"].nunique())
    paths["folds_by_seed"] = write_csv(folds, out / "folds_by_seed.csv")
    seeds = seed_table(folds)
    paths["seeds"] = write_csv(seeds, out / "seeds.csv")
    metrics = metric_columns(folds)
    main = metrics[0] if metrics else TASK_METRICS[task_type][0]
    lines = ["", "## Seeds, bootstrap and paired tests", ""]
    lines.append(
        f"Seeds per fold: {n_seeds}. Spread of the cross-validated {METRIC_LABELS[main]} across seeds:"
    )
    lines += [
        "",
        "| Aggregator | Feature set | mean | SD across seeds | min | max |",
        "|:--|:--|--:|--:|--:|--:|",
    ]
    for _, r in seeds[seeds["metric"] == main].iterrows():
        sd = "–" if math.isnan(r["seed_sd"]) else f"{r['seed_sd']:.3f}"
        lines.append(f"| {r['aggregator'] or '–'} | {r['feature_set']} | {r['seed_mean']:.3f} | {sd} | "
                     f"{r['seed_min']:.3f} | {r['seed_max']:.3f} |")  # fmt: skip
    pooled = pooled_predictions(predictions, task_type) if len(predictions) else predictions
    if n_boot and len(pooled):
        rows = []
        funcs = pooled_metrics(task_type)
        for (agg, fs), f in pooled.groupby(KEYS, sort=False):
            for m, fn in funcs.items():
                rows.append(
                    {"aggregator": agg, "feature_set": fs, "metric": m, **bootstrap_ci(f, fn, n_boot=n_boot)}
                )
        boot = pd.DataFrame(rows)
        paths["bootstrap"] = write_csv(boot, out / "bootstrap.csv")
        lines += ["", f"Pooled out-of-fold predictions (mean per slide over seeds and repeats), with the 95% "
                  f"patient-level bootstrap interval ({n_boot} resamples of patients):", "",
                  "| Aggregator | Feature set | Metric | estimate | 95% bootstrap CI |", "|:--|:--|:--|--:|:-:|"]  # fmt: skip
        for _, r in boot.iterrows():
            lines.append(f"| {r['aggregator'] or '–'} | {r['feature_set']} | {METRIC_LABELS[r['metric']]} | "
                         f"{r['estimate']:.3f} | {r['ci_low']:.3f}–{r['ci_high']:.3f} |")  # fmt: skip
    if baseline:
        paired = paired_cells(
            folds, predictions, baseline=baseline, task_type=task_type, feature_sets=feature_sets
        )
        if len(paired):
            paths["paired"] = write_csv(paired, out / "paired.csv")
            lines += ["", "Each feature set against the baseline under the same aggregator (Holm-adjusted over "
                      "every set x aggregator compared; the seed noise is the SD across seeds of the "
                      "difference of cross-validated means):", ""]  # fmt: skip
            lines += [f"- {s}" for s in plain_words(paired, main, n_seeds)]
    if task_type == "survival" and len(pooled):
        curves, tests = km_tables(pooled, risk_groups)
        paths["km"] = write_csv(curves, out / "km.csv")
        paths["logrank"] = write_csv(tests, out / "logrank.csv")
        p_of = {(r["aggregator"], r["feature_set"]): r["p"] for _, r in tests.iterrows()}

        def draw_km(ax: Any, agg: str, fs: str) -> None:
            sub = curves[(curves["aggregator"] == agg) & (curves["feature_set"] == fs)]
            for g, c in sub.groupby("group"):
                ax.step(c["time"], c["survival"], where="post", label=f"risk group {g}")
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("time")
            ax.legend(fontsize=7, title=f"log-rank p={_p(p_of[(agg, fs)])}", title_fontsize=7)

        cells = list(dict.fromkeys(zip(pooled["aggregator"], pooled["feature_set"])))
        paths["km_plot"] = _plot_grid(
            cells, out / "km.png", draw_km, f"{title}\nKaplan-Meier by predicted risk group"
        )
        lines += ["", "Log-rank test across predicted-risk groups (km.png):", ""]
        lines += [f"- {fs}{' · ' + agg if agg else ''}: p={_p(p)}" for (agg, fs), p in p_of.items()]
    if task_type == "regression" and len(pooled):

        def draw_scatter(ax: Any, agg: str, fs: str) -> None:
            sub = pooled[(pooled["aggregator"] == agg) & (pooled["feature_set"] == fs)]
            ax.scatter(sub["target"], sub["pred"], s=8, alpha=0.7)
            lo = float(min(sub["target"].min(), sub["pred"].min()))
            hi = float(max(sub["target"].max(), sub["pred"].max()))
            ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=0.8)
            ax.set_xlabel("true")
            ax.set_ylabel("predicted")

        cells = list(dict.fromkeys(zip(pooled["aggregator"], pooled["feature_set"])))
        paths["scatter"] = _plot_grid(cells, out / "scatter.png", draw_scatter, f"{title}\npredicted vs true")
    text = "\n".join(lines).rstrip() + "\n"
    paths["statistics"] = atomic_write_text(out / "statistics.md", text)
    return paths, text


def report_view(
    folds: pd.DataFrame, predictions: pd.DataFrame, feature_sets: Sequence[str], baseline: str | None
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], str | None]:
    """What the per-set report (:func:`zoomfeat.mil.report.write_report`) is given: folds averaged
    over seeds, and with several aggregators every (set, aggregator) cell as its own row named
    ``"{set} · {aggregator}"`` (its paired tests are then :func:`paired_cells`'s, in paired.csv).

    Returns:
        ``(folds, predictions, feature_sets, baseline)`` for ``write_report``.
    """
    avg = seed_average(folds)
    aggs = list(dict.fromkeys(avg["aggregator"]))
    if len(aggs) <= 1:
        return (
            avg.drop(columns=["aggregator"]).assign(aggregator=aggs[0] if aggs else ""),
            predictions,
            list(feature_sets),
            baseline,
        )
    name = avg["feature_set"].astype(str) + " · " + avg["aggregator"].astype(str)
    preds = predictions.copy()
    if len(preds):
        preds["feature_set"] = (
            preds["feature_set"].astype(str) + " · " + preds["aggregator"].fillna("").astype(str)
        )
    sets = [f"{fs} · {a}" for a in aggs for fs in ordered_sets(avg, feature_sets)]
    return avg.assign(feature_set=name), preds, sets, None
