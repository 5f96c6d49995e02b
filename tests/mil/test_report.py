"""zoomfeat.mil.report: folds/summary/paired CSVs, summary.md and summary.png; one set has no paired part."""

import numpy as np
import pandas as pd
import pytest

from zoomfeat.mil.metrics import paired_comparison
from zoomfeat.mil.report import write_report
from zoomfeat.mil.tables import summary_table


def _folds():
    rng = np.random.default_rng(0)
    rows = []
    for fs, shift in (("uni_20x", 0.0), ("zoomldm_fused", 0.05)):
        for fold in range(5):
            base = 0.8 + 0.02 * fold
            rows.append(
                {
                    "feature_set": fs,
                    "repeat": 0,
                    "fold": fold,
                    "auc": base + shift,
                    "balanced_accuracy": base - 0.1 + shift,
                    "f1": rng.uniform(0.6, 0.8),
                    "accuracy": base - 0.05,
                    "n_train": 64,
                    "n_val": 16,
                    "n_test": 20,
                }
            )
    return pd.DataFrame(rows)


def test_write_report_outputs(tmp_path):
    folds = _folds()
    paths = write_report(
        tmp_path,
        folds,
        baseline="uni_20x",
        title="demo: abmil",
        notes=["a note"],
        feature_sets=["uni_20x", "zoomldm_fused"],
    )
    for key in ("folds", "summary", "paired", "markdown", "plot"):
        assert paths[key].is_file(), key
    assert list(pd.read_csv(paths["folds"]).columns[:7]) == [
        "feature_set",
        "repeat",
        "fold",
        "auc",
        "balanced_accuracy",
        "f1",
        "accuracy",
    ]
    summary = pd.read_csv(paths["summary"])
    assert list(summary.columns) == ["feature_set", "metric", "mean", "std", "ci_low", "ci_high", "n"]
    auc = summary[(summary["feature_set"] == "zoomldm_fused") & (summary["metric"] == "auc")].iloc[0]
    assert auc["mean"] == pytest.approx(0.89) and auc["n"] == 5 and auc["ci_low"] < 0.89 < auc["ci_high"]
    paired = pd.read_csv(paths["paired"])
    row = paired[(paired["feature_set"] == "zoomldm_fused") & (paired["metric"] == "auc")].iloc[0]
    ref = paired_comparison(
        folds[folds.feature_set == "zoomldm_fused"]["auc"].to_numpy(),
        folds[folds.feature_set == "uni_20x"]["auc"].to_numpy(),
        20 / 80,
    )
    assert (
        row["diff_mean"] == pytest.approx(0.05)
        and row["p_corrected_t"] == pytest.approx(ref["p_corrected_t"])
        and row["wins"] == 5
    )
    md = paths["markdown"].read_text()
    assert "| Feature set | AUC | Balanced accuracy | F1 | Accuracy |" in md
    assert "**0.890 ± 0.032" in md  # best AUC in bold
    assert (
        "Paired comparison with uni_20x" in md
        and "Nadeau-Bengio" in md
        and "Wilcoxon" in md
        and "- a note" in md
    )
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_set_report_has_no_paired_section(tmp_path):
    folds = _folds()
    folds = folds[folds["feature_set"] == "uni_20x"]
    paths = write_report(tmp_path, folds, baseline=None, title="single")
    assert "paired" not in paths and "Paired" not in paths["markdown"].read_text()
    assert summary_table(folds)["feature_set"].unique().tolist() == ["uni_20x"]
