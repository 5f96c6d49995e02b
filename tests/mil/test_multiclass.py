"""Issue 10: task=custom labels and k-class attention MIL (softmax head, macro metrics, report)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from zoomfeat.mil.abmil import build_model
from zoomfeat.mil.benchmark import run_benchmark
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection
from zoomfeat.mil.labels import map_labels, read_labels
from zoomfeat.mil.metrics import macro_ovr_auc, multiclass_metrics
from zoomfeat.mil.train import class_weights
from zoomfeat.runtime.errors import ConfigError, InputError

from .bagfactory import write_bags


def test_labels_strings_indices_and_maps():
    names = pd.Series(["LumB", "Basal", "LumA", None, "Basal"])
    labels, _ = map_labels(names, auto_classes=True)
    assert labels.tolist()[:3] == [2.0, 0.0, 1.0] and np.isnan(labels[3])  # sorted: Basal, LumA, LumB
    with pytest.raises(InputError, match="task.auto_classes=true"):
        map_labels(names)
    assert map_labels(pd.Series([2, 0, 1, 1]))[0].tolist() == [2, 0, 1, 1]  # already 0..k-1
    assert map_labels(pd.Series([10, 2, 2]), auto_classes=True)[0].tolist() == [1, 0, 0]  # numeric order
    assert map_labels(names, label_map={"Basal": 0, "LumA": 1, "LumB": 1})[0].tolist()[:3] == [1, 0, 1]
    with pytest.raises(ConfigError, match="0..k-1"):
        map_labels(names, label_map={"Basal": 0, "LumA": 2})


def test_multiclass_metrics_match_sklearn():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60) + np.eye(3)[y] * 0.3
    p /= p.sum(1, keepdims=True)
    m = multiclass_metrics(y, p)
    # same pairwise-count definitions: equal up to float64 summation order (1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"), abs=1e-12)
    assert m["accuracy"] == np.mean(p.argmax(1) == y)
    # a class absent from a fold is left out of the macro AUC (not an error)
    keep = y != 2
    assert macro_ovr_auc(y[keep], p[keep]) == pytest.approx(
        np.mean([roc_auc_score(y[keep] == c, p[keep, c]) for c in (0, 1)]), abs=1e-12
    )


def test_k_class_weights_and_head():
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(y, True, 3)
    assert np.allclose([w[c] * (y == c).sum() for c in range(3)], len(y) / 3)  # each class 1/k of the loss
    assert np.allclose(class_weights(np.array([0, 0, 1]), True), [0.75, 1.5])  # binary unchanged
    model = build_model(5, MILConfig(hidden=[4], att_dim=3), n_classes=3)
    out, att = model(torch.zeros(1, 7, 5), return_att=True)
    assert out.shape == (1, 3) and att.shape == (1, 7)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """30 one-slide patients, classes A/B/C: a bag of class c > 0 holds 1-3 key instances shifted by
    3 sd along feature block c (classic MIL); class A bags are pure noise."""
    root = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(11)
    feats, rows = {}, []
    for i in range(30):
        c = i % 3
        x = rng.normal(size=(int(rng.integers(6, 14)), 9)).astype(np.float32)
        if c:
            x[: int(rng.integers(1, 4)), 3 * c : 3 * c + 3] += 3.0
        feats[f"s{i:02d}"] = x[rng.permutation(len(x))]
        rows.append({"slide_id": f"s{i:02d}", "case_id": f"p{i:02d}", "subtype": "ABC"[c]})
    write_bags(root, "enc", feats)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_three_class_benchmark_end_to_end(three_classes, tmp_path):
    cohort = read_labels(three_classes / "labels.csv", label_col="subtype", auto_classes=True)
    assert sorted(set(cohort["label"])) == [0, 1, 2]
    cfg = BenchmarkConfig(
        task=TaskSection(name="custom", labels=str(three_classes / "labels.csv"), bags=str(three_classes),
                         label_col="subtype", auto_classes=True),
        feature_sets=["enc"], baseline=None, out_dir=str(tmp_path), cv=CVSection(folds=3, val_fraction=0.0),
        mil=MILConfig(hidden=[16], att_dim=8, lr=3e-3, epochs=30, min_epochs=1, warmup=0, amp=False),
        progress=False, threads=1,
    )  # fmt: skip
    out = run_benchmark(cfg)["out_dir"]
    folds = pd.read_csv(out / "folds.csv")
    # planted signal 3 sd on 1-3 of 6-13 instances: far from chance (1/3 accuracy, 0.5 AUC)
    assert folds["auc"].mean() > 0.8 and folds["balanced_accuracy"].mean() > 0.6, folds
    pred = pd.read_csv(out / "predictions.csv")
    probs = pred[["prob_0", "prob_1", "prob_2"]].to_numpy()
    # float64 softmax written with 17 digits by pandas: rows sum to 1 within a few ulp
    assert np.allclose(probs.sum(1), 1, atol=1e-12) and (pred["pred"] == probs.argmax(1)).all()
    for fold, frame in pred.groupby("fold"):  # folds.csv recomputes from the same predictions
        m = multiclass_metrics(frame["label"], frame[["prob_0", "prob_1", "prob_2"]].to_numpy())
        assert m["f1"] == pytest.approx(folds.loc[folds["fold"] == fold, "f1"].item(), abs=1e-12)
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["name"].tolist() == ["A", "B", "C"] and per_class["n"].sum() == 30
    confusion = pd.read_csv(out / "confusion.csv")
    assert confusion[["pred A", "pred B", "pred C"]].to_numpy().sum() == 30
    recall_b = confusion.loc[1, "pred B"] / 10
    assert per_class.loc[1, "recall"] == pytest.approx(recall_b)
    md = (out / "summary.md").read_text()
    assert "3 classes (A, B, C): softmax head" in md and "## Confusion matrices" in md
    assert (out / "roc.png").stat().st_size > 10_000
    assert json.loads((out / "run.json").read_text())["cohort"]["classes"] == ["A", "B", "C"]


def test_a_class_with_no_slides_is_refused(three_classes, tmp_path):
    cfg = BenchmarkConfig(
        task=TaskSection(name="custom", labels=str(three_classes / "labels.csv"), bags=str(three_classes),
                         label_col="subtype", label_map={"A": 0, "B": 1, "D": 2, "C": 3}),
        feature_sets=["enc"], baseline=None, out_dir=str(tmp_path), progress=False, mil=MILConfig(epochs=1),
    )  # fmt: skip
    with pytest.raises(
        InputError, match=r"labels.csv: class\(es\) \['2'\] of \['A', 'B', '2', 'C'\] have no slide"
    ):
        run_benchmark(cfg)
