"""Nested recipe selection (zoomfeat.mil.selection): the choice never sees the test folds.

The planted cohort: 40 patients ("A") rotate through 4 outer test folds (10 each) and 32 patients
("V") are the inner validation part of every fold and never tested (a fixed cv.splits file).

* ``zoomldm-t50-mid_fused`` (honest): positives' instances shifted by +1 on 4 features,
  everywhere; 7 of the A patients and 1 of the V patients carry the other class's signal, so it
  is moderately informative on test (AUC ~0.8) and clearly so on validation.
* ``zoomldm-t200-out4_fused`` (planted): a clean shift of +1.5 on the A patients (the only ones
  ever tested: near-perfect test AUC) and pure N(0, 1) noise on the V patients.
* ``uni_20x`` (baseline): a weak shift of +0.3.

A choice that looked at test data would pick the planted recipe; nested selection must pick the
honest one in every fold, and the selected row must carry exactly its test predictions.
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import torch

from zoomfeat.bags import write_bag
from zoomfeat.mil.benchmark import Benchmark, torch_threads
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, SelectionSection, TaskSection
from zoomfeat.mil.feeding import BagFeeder, predict
from zoomfeat.mil.fold_loop import fold_seed
from zoomfeat.mil.metrics import binary_metrics
from zoomfeat.mil.selection import NestedSelection, choose_candidate
from zoomfeat.mil.sources import load_feature_set
from zoomfeat.mil.splits import fold_parts, load_splits
from zoomfeat.mil.train import train_fold
from zoomfeat.runtime.errors import ConfigError, InputError

from .bagfactory import COORDS_ATTRS

FAST = MILConfig(
    hidden=[16], att_dim=8, dropout=0.0, lr=3e-3, epochs=12, patience=5, min_epochs=4, warmup=0, amp=False
)
HONEST, PLANTED, BASELINE = "zoomldm-t50-mid_fused", "zoomldm-t200-out4_fused", "uni_20x"
RECIPES = {
    HONEST: {"recipe_name": "zoomldm-t50-mid", "timestep": 50, "taps": '["middle_block"]'},
    PLANTED: {"recipe_name": "zoomldm-t200-out4", "timestep": 200, "taps": '["output_blocks.4"]'},
}
N_A, N_V, FOLDS, DIM = 40, 32, 4, 8


def _bag(rng, shift: float, positive: bool) -> np.ndarray:
    x = rng.normal(size=(int(rng.integers(8, 16)), DIM)).astype(np.float32)
    if positive:
        x[:, :4] += shift
    return x


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Bags of the three sets, labels CSV and the fixed splits file (see the module header)."""
    root = tmp_path_factory.mktemp("recipes")
    rows = [(f"A{i:03d}", i % 2, "A") for i in range(N_A)] + [(f"V{i:03d}", i % 2, "V") for i in range(N_V)]
    flipped = {f"A{i:03d}" for i in range(3, N_A, 6)} | {"V005"}  # carry the other class's signal
    rng = np.random.default_rng(0)
    for slide, label, block in rows:
        sets = {
            HONEST: _bag(rng, 1.0, bool(label) != (slide in flipped)),
            PLANTED: _bag(rng, 1.5, bool(label)) if block == "A" else _bag(rng, 0.0, False),
            BASELINE: _bag(rng, 0.3, bool(label)),
        }
        for fs, x in sets.items():
            coords = np.stack([np.arange(len(x)) * 256, np.zeros(len(x))], 1)
            attrs = {"pooling": "mean", "ensemble": 1, **RECIPES.get(fs, {})}
            write_bag(root / f"features_{fs}" / f"{slide}.h5", x, coords, COORDS_ATTRS, attrs=attrs)
    labels = pd.DataFrame({"slide_id": [r[0] for r in rows], "case_id": [r[0] for r in rows]})
    labels["label"] = [r[1] for r in rows]
    labels.to_csv(root / "labels.csv", index=False)
    split_rows = []
    for fold in range(FOLDS):
        for slide, label, block in rows:
            part = "val" if block == "V" else "test" if int(slide[1:]) // 2 % FOLDS == fold else "train"
            split_rows.append((0, fold, part, slide, slide, label))
    splits = pd.DataFrame(split_rows, columns=["repeat", "fold", "part", "slide_id", "case_id", "label"])
    splits.to_csv(root / "splits.csv", index=False)
    return root


def _config(root, out, **selection) -> BenchmarkConfig:
    return BenchmarkConfig(
        task=TaskSection(name="planted", bags=str(root), labels=str(root / "labels.csv")),
        feature_sets=[BASELINE],
        baseline=BASELINE,
        cv=CVSection(folds=FOLDS, splits=str(root / "splits.csv")),
        mil=FAST,
        selection=SelectionSection(**{"candidates": ["zoomldm*_fused"], **selection}),
        out_dir=str(out),
        threads=1,
        progress=False,
        save_attention=False,
    )


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = Benchmark(_config(cohort, out)).run()
    read = lambda name: pd.read_csv(out / name, dtype={"slide_id": str})  # noqa: E731
    return {
        "result": result,
        "folds": read("folds.csv"),
        "preds": read("predictions.csv"),
        "selection": read("selection.csv"),
        "out": out,
    }


def test_planted_recipe_is_best_on_test_yet_never_selected(run):
    folds, sel = run["folds"], run["selection"]
    test_auc = folds.groupby("feature_set")["auc"].mean()
    # the trap is real: on the test folds the planted recipe beats the honest one
    assert test_auc[PLANTED] > test_auc[HONEST] + 0.05, test_auc
    per_fold = folds.pivot(index="fold", columns="feature_set", values="auc")
    oracle = [choose_candidate({c: per_fold.loc[f, c] for c in (HONEST, PLANTED)}) for f in range(FOLDS)]
    assert oracle.count(PLANTED) >= 3, per_fold  # a choice by test AUC would mostly pick it
    # nested selection scored both on the validation-only slides, where the planted one is noise
    # candidates in the glob's (sorted) order
    assert list(sel.columns) == ["repeat", "fold", "metric", "chosen", PLANTED, HONEST]
    assert len(sel) == FOLDS and (sel["metric"] == "auc").all()
    assert (sel["chosen"] == HONEST).all(), sel
    assert (sel[HONEST] > sel[PLANTED]).all() and (sel[HONEST] > 0.85).all(), sel


def test_selected_row_carries_the_val_best_candidates_test_predictions(run):
    folds, preds, sel = run["folds"], run["preds"], run["selection"]
    cols = ["repeat", "fold", "slide_id", "case_id", "label", "prob", "pred", "n_instances"]
    for _, row in sel.iterrows():
        best = max((HONEST, PLANTED), key=lambda c: row[c])  # the val-best, from the val scores alone
        at = (preds["repeat"] == row["repeat"]) & (preds["fold"] == row["fold"])
        chosen = preds[at & (preds["feature_set"] == best)][cols].reset_index(drop=True)
        selected = preds[at & (preds["feature_set"] == "selected")][cols].reset_index(drop=True)
        assert len(selected) == N_A // FOLDS
        pd.testing.assert_frame_equal(selected, chosen)  # copied rows: exact
        other = preds[at & (preds["feature_set"] == PLANTED)][cols].reset_index(drop=True)
        assert not np.array_equal(selected["prob"].to_numpy(), other["prob"].to_numpy())
        f_sel = folds[(folds["feature_set"] == "selected") & (folds["fold"] == row["fold"])]
        f_best = folds[(folds["feature_set"] == best) & (folds["fold"] == row["fold"])]
        assert (
            f_sel.drop(columns="feature_set").values.tolist()
            == f_best.drop(columns="feature_set").values.tolist()
        )
    # its metrics recomputed from its predictions (binary_metrics is what the folds table holds)
    for fold, frame in preds[preds["feature_set"] == "selected"].groupby("fold"):
        auc = binary_metrics(frame["label"], frame["prob"])["auc"]
        assert auc == folds[(folds["feature_set"] == "selected") & (folds["fold"] == fold)]["auc"].item()


def test_selected_row_in_summary_paired_test_and_markdown(run):
    out = run["out"]
    summary = pd.read_csv(out / "summary.csv")
    assert list(dict.fromkeys(summary["feature_set"])) == [BASELINE, PLANTED, HONEST, "selected"]
    paired = pd.read_csv(out / "paired.csv")
    row = paired[(paired["feature_set"] == "selected") & (paired["metric"] == "auc")]
    honest = paired[(paired["feature_set"] == HONEST) & (paired["metric"] == "auc")]
    assert row["baseline"].item() == BASELINE and row["n"].item() == FOLDS
    assert row["diff_mean"].item() == honest["diff_mean"].item()  # it chose HONEST in every fold
    md = (out / "summary.md").read_text()
    assert "| selected |" in md and f"{PLANTED} 0/4, {HONEST} 4/4" in md
    heat = pd.read_csv(out / "recipes_heatmap.csv").set_index("feature_set")
    assert heat.loc[HONEST, "times_chosen"] == 4 and heat.loc[PLANTED, "times_chosen"] == 0
    assert heat.loc[PLANTED, "timestep"] == 200 and heat.loc[PLANTED, "taps"] == '["output_blocks.4"]'
    assert (out / "recipes_heatmap.png").stat().st_size > 10_000
    assert {"selection", "recipes_heatmap", "recipes_heatmap_csv"} <= set(run["result"]["paths"])


def test_validation_scores_are_the_retrained_models_own(cohort, run):
    """The score in selection.csv is that of the fold's model on the validation slides: retrain
    fold 0 of the planted candidate with the benchmark's seed and score its validation part."""
    splits = load_splits(cohort / "splits.csv")
    parts = fold_parts(splits, 0, 0)
    table = pd.read_csv(cohort / "labels.csv", dtype={"slide_id": str, "case_id": str})
    with torch_threads(1):
        bags = load_feature_set(cohort / f"features_{PLANTED}", PLANTED, cohort=table, progress=False)
        train, val = bags.index(parts["train"]), bags.index(parts["val"])
        result = train_fold(bags, train, val, FAST, seed=fold_seed(0, 0, 0), device="cpu", progress=False)
        probs, _ = predict(result.model, BagFeeder(bags, torch.device("cpu")), val)
    # AUC is a rank statistic of the same model on the same bags, so the two agree exactly
    assert binary_metrics(bags.labels[val], probs)["auc"] == run["selection"].loc[0, PLANTED]


def test_choose_candidate_sees_only_validation_scores():
    assert list(inspect.signature(choose_candidate).parameters) == ["val_scores"]
    assert choose_candidate({"a": 0.7, "b": 0.9, "c": 0.8}) == "b"
    assert choose_candidate({"a": 0.8, "b": 0.8, "c": 0.8}) == "a"  # ties: the first in order
    assert choose_candidate({"c": 0.8, "a": 0.8}) == "c"
    assert choose_candidate({"a": float("nan"), "b": 0.1}) == "b"  # NaN never wins
    assert choose_candidate({"a": float("nan"), "b": float("nan")}) == "a"
    with pytest.raises(ValueError, match="no candidates"):
        choose_candidate({})


def test_selection_settings_are_checked(cohort, tmp_path):
    with pytest.raises(ConfigError, match=r"cv.val_fraction > 0"):
        BenchmarkConfig(
            TaskSection(name="t"), cv=CVSection(val_fraction=0), selection=SelectionSection(["a"])
        )
    with pytest.raises(ConfigError, match="selection.metric must be one of"):
        SelectionSection(["a"], metric="loss")
    with pytest.raises(ConfigError, match="is also a feature set"):
        NestedSelection.plan(_config(cohort, tmp_path, name=HONEST), [BASELINE])
    no_val = pd.read_csv(cohort / "splits.csv").replace({"part": {"val": "train"}})
    no_val.to_csv(tmp_path / "no_val.csv", index=False)
    cfg = _config(cohort, tmp_path / "out")
    cfg.cv.splits = str(tmp_path / "no_val.csv")
    with pytest.raises(InputError, match="repeat 0 fold 0 has no validation slides to choose a candidate on"):
        Benchmark(cfg).run()  # refused before any training
    plan = NestedSelection.plan(_config(cohort, tmp_path), [BASELINE, HONEST])
    assert plan.candidates == [PLANTED, HONEST]  # the glob expanded in sorted order
    assert plan.feature_sets([BASELINE, HONEST]) == [BASELINE, HONEST, PLANTED]  # each set once


def test_a_fold_where_a_candidate_was_not_scored_is_left_out_with_a_warning():
    """A candidate skipped in a fold (no usable bags there) leaves that fold out of the selected
    row; the user is told, since the row's paired tests then run on fewer folds."""
    from zoomfeat.mil.bagset import BenchWarning

    sel = NestedSelection(["a_fused", "b_fused"])
    sel.val = {(0, 0): {"a_fused": {"auc": 0.7}, "b_fused": {"auc": 0.9}}, (0, 1): {"a_fused": {"auc": 0.8}}}
    with pytest.warns(
        BenchWarning, match=r"repeat 0 fold 1: b_fused not scored .* left out of the selected row"
    ):
        assert sel.choices() == {(0, 0): "b_fused"}
    assert sel.choices() is sel.choices()  # computed once
