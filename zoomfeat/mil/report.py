"""Benchmark outputs: the per-fold table, the summary (CSV, Markdown, PNG) and per-class files.

Files written into ``out_dir`` by :func:`write_report` (the numbers come from
:mod:`zoomfeat.mil.tables`):

* ``folds.csv``: feature_set, repeat, fold, auc, balanced_accuracy, f1, accuracy, then
  n_train, n_val, n_test, best_epoch, seconds;
* ``summary.csv``: feature_set, metric, mean, std, ci_low, ci_high, n (t-based 95% CI of the
  mean over folds);
* ``paired.csv`` and ``summary.md``: each feature set against the baseline over the same
  folds (Nadeau-Bengio corrected resampled t-test and Wilcoxon signed-rank test);
* ``summary.png``: each metric per feature set, mean with 95% CI error bars and the folds;
* ``per_class.csv``, ``confusion.csv`` (also in summary.md) and ``roc.png``: per-class recall,
  precision, F1 and one-vs-rest AUC, confusion matrices and ROC curves of the pooled
  out-of-fold predictions of each set (binary and k-class tasks).

Per-slide test predictions (``predictions.csv``, :data:`PREDICTION_COLUMNS`, through
:func:`write_csv`) and attention (:mod:`zoomfeat.mil.attention`) are written by the fold loop as
the folds finish. Every file is written atomically (:mod:`zoomfeat.runtime.atomic`): a killed
run leaves complete files or none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# tests/test_heatmap.py imports write_attention from here
from zoomfeat.mil.attention import write_attention as write_attention
from zoomfeat.mil.metrics import METRIC_BOUNDS, METRIC_LABELS, METRICS, metric_columns
from zoomfeat.mil.tables import class_probabilities, class_tables, ordered_sets, paired_table, summary_table
from zoomfeat.runtime.atomic import atomic_path, atomic_write_text, ensure_dir

FOLD_COLUMNS = ("feature_set", "repeat", "fold", *METRICS)
PREDICTION_COLUMNS = (
    "feature_set",
    "repeat",
    "fold",
    "slide_id",
    "case_id",
    "label",
    "prob",
    "pred",
    "n_instances",
)


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """``frame`` as CSV (no index) at ``path``, written atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown(summary: pd.DataFrame, paired: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """A paper-ready Markdown summary: mean ± std (95% CI) per set and metric, then the paired tests.

    Args:
        summary: :func:`~zoomfeat.mil.tables.summary_table`'s table.
        paired: :func:`~zoomfeat.mil.tables.paired_table`'s table (empty: no paired section).
        title: the heading.
        notes: bullet lines after the tables.

    Returns:
        The Markdown text (the best mean per metric in bold when there are several sets).
    """
    sets = list(dict.fromkeys(summary["feature_set"]))
    metrics = list(dict.fromkeys(summary["metric"])) or list(METRICS)  # the task's metrics
    best = {m: summary[summary["metric"] == m]["mean"].max() for m in metrics}
    lines = [f"# {title}", ""]
    lines.append("| Feature set | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " |")
    lines.append("|:--|" + "--:|" * len(metrics))
    n_folds = 0
    for fs in sets:
        cells = []
        for m in metrics:
            row = summary[(summary["feature_set"] == fs) & (summary["metric"] == m)].iloc[0]
            n_folds = max(n_folds, int(row["n"]))
            text = f"{_fmt(row['mean'])} ± {_fmt(row['std'])} ({_fmt(row['ci_low'])}–{_fmt(row['ci_high'])})"
            if len(sets) > 1 and not math.isnan(row["mean"]) and row["mean"] == best[m]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {fs} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Mean ± standard deviation over {n_folds} test folds, with the 95% t-interval of the mean (clipped to [0, 1]) in brackets.",
        "",
    ]
    if len(paired):
        baseline = paired["baseline"].iloc[0]
        lines += [
            f"## Paired comparison with {baseline} (same folds)",
            "",
            "| Feature set | Metric | Δ mean | p (corrected t) | p (Wilcoxon) | wins / ties / losses |",
            "|:--|:--|--:|--:|--:|:-:|",
        ]
        for _, row in paired.iterrows():
            lines.append(
                f"| {row['feature_set']} | {METRIC_LABELS[row['metric']]} | {row['diff_mean']:+.3f} | {_fmt_p(row['p_corrected_t'])} | "
                f"{_fmt_p(row['p_wilcoxon'])} | {row['wins']} / {row['ties']} / {row['losses']} |"
            )
        lines += [
            "",
            "Δ = feature set minus baseline, averaged over folds. p (corrected t): two-sided paired t-test "
            "with the Nadeau-Bengio correction for overlapping cross-validation training sets; "
            "p (Wilcoxon): two-sided Wilcoxon signed-rank test on the fold differences. No correction "
            "for multiple comparisons.",
            "",
        ]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def plot_summary(summary: pd.DataFrame, folds: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """One panel per metric: mean per feature set with 95% CI error bars, folds as dots.

    Args:
        summary: the summary table; folds: the per-fold table; path: the PNG; title: figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(summary["feature_set"]))
    metrics = list(dict.fromkeys(summary["metric"])) or list(METRICS)  # the task's metrics
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes[0], metrics):
        sub = summary[summary["metric"] == metric].set_index("feature_set").loc[sets]
        x = np.arange(len(sets))
        mean = sub["mean"].to_numpy(dtype=float)
        err = np.vstack(
            [mean - sub["ci_low"].to_numpy(dtype=float), sub["ci_high"].to_numpy(dtype=float) - mean]
        )
        err = np.nan_to_num(err, nan=0.0)
        ax.bar(x, mean, color="#9ecae1", edgecolor="#3182bd", width=0.6)
        ax.errorbar(x, mean, yerr=err, fmt="none", ecolor="black", capsize=4, lw=1.2)
        for k, fs in enumerate(sets):
            vals = folds.loc[folds["feature_set"] == fs, metric].to_numpy(dtype=float)
            ax.scatter(
                k + rng.uniform(-0.15, 0.15, len(vals)), vals, s=8, color="#08519c", alpha=0.6, zorder=3
            )
        ax.set_xticks(x, sets, rotation=35, ha="right", fontsize=8)
        ax.set_title(METRIC_LABELS[metric], fontsize=10)
        if METRIC_BOUNDS[metric] == (0.0, 1.0):
            ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def class_markdown(per_class: pd.DataFrame, confusion: pd.DataFrame) -> str:
    """summary.md's per-class and confusion-matrix sections.

    Args:
        per_class, confusion: :func:`~zoomfeat.mil.tables.class_tables`'s tables.

    Returns:
        The Markdown text.
    """
    lines = [
        "## Per class (pooled out-of-fold test predictions)",
        "",
        "| Feature set | Class | n | Recall | Precision | F1 | AUC (one-vs-rest) |",
        "|:--|:--|--:|--:|--:|--:|--:|",
    ]
    for _, r in per_class.iterrows():
        lines.append(
            f"| {r['feature_set']} | {r['name']} | {r['n']} | {_fmt(r['recall'])} | {_fmt(r['precision'])} | "
            f"{_fmt(r['f1'])} | {_fmt(r['auc_ovr'])} |"
        )
    pred_cols = [c for c in confusion.columns if c.startswith("pred ")]
    lines += ["", "## Confusion matrices (rows: true class, columns: predicted)", ""]
    lines.append("| Feature set | True | " + " | ".join(pred_cols) + " |")
    lines.append("|:--|:--|" + "--:|" * len(pred_cols))
    for _, r in confusion.iterrows():
        lines.append(
            f"| {r['feature_set']} | {r['true']} | " + " | ".join(str(r[c]) for c in pred_cols) + " |"
        )
    return "\n".join(lines) + "\n"


def plot_roc(
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    *,
    path: str | Path,
    feature_sets: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """ROC curves of the pooled out-of-fold predictions: binary, one curve per feature set on one
    panel; k > 2, one panel per set with a one-vs-rest curve per class. AUCs in the legends.

    Args:
        predictions: prediction rows of every set; class_names: the k names (index = label);
        path: the PNG; feature_sets: the order; title: figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    k = len(class_names)
    sets = ordered_sets(predictions, feature_sets)
    panels = [None] if k == 2 else sets
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        curves = [(fs, 1) for fs in sets] if panel is None else [(panel, c) for c in range(k)]
        for fs, c in curves:
            pred = predictions[predictions["feature_set"] == fs]
            y = pred["label"].to_numpy(dtype=np.int64) == c
            if not 0 < y.sum() < len(y):
                continue
            score = class_probabilities(pred, k)[:, c]
            fpr, tpr, _ = roc_curve(y, score)
            name = fs if panel is None else f"{class_names[c]} vs rest"
            ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.set_title(f"{panel}" if panel else f"positive class: {class_names[1]}", fontsize=10)
        ax.legend(loc="lower right", fontsize=7)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(f"{title}\nROC of pooled out-of-fold predictions", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def write_report(
    out_dir: str | Path,
    folds: pd.DataFrame,
    *,
    baseline: str | None,
    title: str,
    notes: Sequence[str] = (),
    feature_sets: Sequence[str] | None = None,
    predictions: pd.DataFrame | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write folds.csv, summary.csv, paired.csv, summary.md and summary.png; with ``predictions``
    and ``class_names`` also per_class.csv, confusion.csv and roc.png.

    Args:
        out_dir: the run's output directory.
        folds: one row per (feature_set, repeat, fold): metrics, part sizes, training figures.
        baseline: the set the others are compared with (None: no paired tests).
        title: the heading of summary.md and the plots.
        notes: bullet lines for summary.md.
        feature_sets: the row order.
        predictions: prediction rows (for the per-class files).
        class_names: the k class names.

    Returns:
        ``{name: path}`` of the files written.
    """
    out_dir = ensure_dir(out_dir, "benchmark output directory")
    lead = ["feature_set", "repeat", "fold", *metric_columns(folds)]  # FOLD_COLUMNS for classification
    extra = [c for c in folds.columns if c not in lead]
    folds = folds[lead + extra]
    paths = {
        "folds": out_dir / "folds.csv",
        "summary": out_dir / "summary.csv",
        "paired": out_dir / "paired.csv",
        "markdown": out_dir / "summary.md",
        "plot": out_dir / "summary.png",
    }
    write_csv(folds, paths["folds"])
    summary = summary_table(folds, feature_sets)
    write_csv(summary, paths["summary"])
    paired = paired_table(folds, baseline, feature_sets) if baseline else pd.DataFrame()
    if len(paired):
        write_csv(paired, paths["paired"])
    else:
        paths.pop("paired")
    text = markdown(summary, paired, title, notes)
    if predictions is not None and class_names is not None and len(predictions):
        per_class, confusion = class_tables(predictions, class_names, feature_sets)
        paths["per_class"] = write_csv(per_class, out_dir / "per_class.csv")
        paths["confusion"] = write_csv(confusion, out_dir / "confusion.csv")
        paths["roc"] = plot_roc(
            predictions, class_names, path=out_dir / "roc.png", feature_sets=feature_sets, title=title
        )
        text += "\n" + class_markdown(per_class, confusion) + "\nROC curves: roc.png.\n"
    atomic_write_text(paths["markdown"], text)
    plot_summary(summary, folds, paths["plot"], title)
    return paths
