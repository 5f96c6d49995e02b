"""Benchmark outputs: per-fold table, summary (CSV, Markdown, PNG), predictions, attention.

Files written into ``out_dir`` by :func:`write_report`:

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

Per-slide test predictions (``predictions.csv``) and attention (``attention/{set}/
repeat{r}_fold{f}.h5``, one group per slide) are written as the folds finish. Every file is
written atomically (:mod:`zoomfeat.runtime.atomic`): a killed run leaves complete files or none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from zoomfeat.mil.metrics import METRIC_LABELS, METRICS, paired_comparison, summarize
from zoomfeat.runtime.atomic import atomic_path, atomic_write_text, ensure_dir

FOLD_COLUMNS = ("feature_set", "repeat", "fold", *METRICS)
SUMMARY_COLUMNS = ("feature_set", "metric", "mean", "std", "ci_low", "ci_high", "n")
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


def _ordered(folds: pd.DataFrame, feature_sets: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(folds["feature_set"]))
    if feature_sets is None:
        return present
    return [fs for fs in feature_sets if fs in present] + [fs for fs in present if fs not in feature_sets]


def summary_table(folds: pd.DataFrame, feature_sets: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, std and 95% CI over folds of every metric for every feature set."""
    rows = []
    for fs in _ordered(folds, feature_sets):
        frame = folds[folds["feature_set"] == fs]
        for metric in METRICS:
            rows.append({"feature_set": fs, "metric": metric, **summarize(frame[metric].to_numpy())})
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def paired_table(
    folds: pd.DataFrame, baseline: str, feature_sets: Sequence[str] | None = None
) -> pd.DataFrame:
    """Every other feature set against ``baseline`` over the folds both were run on."""
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
    for fs in _ordered(folds, feature_sets):
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
        for metric in METRICS:
            stats = paired_comparison(
                other.loc[common, metric].to_numpy(), base.loc[common, metric].to_numpy(), ratio
            )
            rows.append({"feature_set": fs, "baseline": baseline, "metric": metric, **stats})
    return pd.DataFrame(rows, columns=columns)


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown(summary: pd.DataFrame, paired: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """A paper-ready Markdown summary: mean ± std (95% CI) per set and metric, then the paired tests."""
    sets = list(dict.fromkeys(summary["feature_set"]))
    best = {m: summary[summary["metric"] == m]["mean"].max() for m in METRICS}
    lines = [f"# {title}", ""]
    lines.append("| Feature set | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |")
    lines.append("|:--|" + "--:|" * len(METRICS))
    n_folds = 0
    for fs in sets:
        cells = []
        for m in METRICS:
            row = summary[(summary["feature_set"] == fs) & (summary["metric"] == m)].iloc[0]
            n_folds = max(n_folds, int(row["n"]))
            text = f"{_fmt(row['mean'])} ± {_fmt(row['std'])} ({_fmt(row['ci_low'])}–{_fmt(row['ci_high'])})"
            if len(sets) > 1 and not math.isnan(row["mean"]) and row["mean"] == best[m]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {fs} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Mean ± standard deviation over {n_folds} test folds, with the 95% t-interval of the mean in brackets.",
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
    """One panel per metric: mean per feature set with 95% CI error bars, folds as dots."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(summary["feature_set"]))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes[0], METRICS):
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


def write_attention(
    path: str | Path, slides: Mapping[str, Mapping[str, Any]], attrs: Mapping[str, Any] | None = None
) -> Path:
    """One HDF5 file per fold: a group per test slide with ``attention`` (softmax over the bag),
    ``attention_logits`` (raw), ``coords`` (when the bag has them), and label/prob attributes."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for slide_id, entry in slides.items():
            g = f.create_group(slide_id.replace("/", "_"))
            logits = np.asarray(entry["attention_logits"], dtype=np.float32)
            soft = np.exp(logits - logits.max()) if len(logits) else logits
            g.create_dataset("attention_logits", data=logits)
            g.create_dataset("attention", data=soft / soft.sum() if len(logits) else soft)
            if entry.get("coords") is not None:
                g.create_dataset("coords", data=np.asarray(entry["coords"], dtype=np.int64))
            g.attrs["slide_id"] = slide_id
            for key in ("label", "prob", "case_id"):
                if key in entry:
                    g.attrs[key] = entry[key]
    return path


def read_attention(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{slide_id: {"attention", "attention_logits", "coords", "label", "prob"}}`` of one fold file."""
    out: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:
        for name, g in f.items():
            entry = {k: g[k][()] for k in g.keys()}
            entry.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()})
            out[str(entry.get("slide_id", name))] = entry
    return out


def class_probabilities(pred: pd.DataFrame, n_classes: int) -> np.ndarray:
    """(n, k) class probabilities of prediction rows: ``prob_{c}`` columns (k > 2), or
    ``[1 - prob, prob]`` for a binary task (``prob`` is P(class 1))."""
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
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    k = len(class_names)
    per_class, confusion = [], []
    for fs in _ordered(predictions, feature_sets):
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


def class_markdown(per_class: pd.DataFrame, confusion: pd.DataFrame) -> str:
    """summary.md's per-class and confusion-matrix sections."""
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
    path: str | Path,
    feature_sets: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """ROC curves of the pooled out-of-fold predictions: binary, one curve per feature set on one
    panel; k > 2, one panel per set with a one-vs-rest curve per class. AUCs in the legends."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    k = len(class_names)
    sets = _ordered(predictions, feature_sets)
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
    baseline: str | None,
    title: str,
    notes: Sequence[str] = (),
    feature_sets: Sequence[str] | None = None,
    predictions: pd.DataFrame | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write folds.csv, summary.csv, paired.csv, summary.md and summary.png; with ``predictions``
    and ``class_names`` also per_class.csv, confusion.csv and roc.png. Returns their paths."""
    out_dir = ensure_dir(out_dir, "benchmark output directory")
    extra = [c for c in folds.columns if c not in FOLD_COLUMNS]
    folds = folds[list(FOLD_COLUMNS) + extra]
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
        paths["roc"] = plot_roc(predictions, class_names, out_dir / "roc.png", feature_sets, title)
        text += "\n" + class_markdown(per_class, confusion) + "\nROC curves: roc.png.\n"
    atomic_write_text(paths["markdown"], text)
    plot_summary(summary, folds, paths["plot"], title)
    return paths
