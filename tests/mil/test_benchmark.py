import json

import h5py
import pandas as pd
import pytest

from zoomfeat.mil.bagset import BenchWarning
from zoomfeat.mil.benchmark import Benchmark, run_benchmark, torch_threads
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection
from zoomfeat.runtime.errors import BagError, ConfigError, InputError

FAST = MILConfig(hidden=[32], att_dim=16, dropout=0.1, lr=2e-3, epochs=20, patience=6, min_epochs=5, warmup=0)


def test_benchmark_separates_informative_from_noise_features(planted, tmp_path):
    cfg = BenchmarkConfig(
        task=TaskSection(
            name="planted",
            bags=str(planted["root"]),
            labels=str(planted["labels"]),
            label_map={"IDC": 0, "ILC": 1},
        ),
        feature_sets=["noise", "good"],
        baseline="noise",
        out_dir=str(tmp_path / "out"),
        cv=CVSection(folds=4),
        mil=FAST,
        progress=False,
    )
    result = run_benchmark(cfg)
    out = result["out_dir"]
    folds = pd.read_csv(out / "folds.csv")
    assert len(folds) == 8 and set(folds["feature_set"]) == {"good", "noise"}
    good, noise = (folds[folds["feature_set"] == s]["auc"].mean() for s in ("good", "noise"))
    assert good > 0.85 and noise < 0.75, (good, noise)
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired["feature_set"]) == {"good"} and (paired["baseline"] == "noise").all()
    assert paired.loc[paired["metric"] == "auc", "diff_mean"].item() > 0.1
    preds = pd.read_csv(out / "predictions.csv", dtype={"slide_id": str})
    assert len(preds) == 2 * 40 and preds.groupby("feature_set")["slide_id"].nunique().tolist() == [40, 40]
    splits = pd.read_csv(out / "splits.csv")
    test_of = splits[splits["part"] == "test"].set_index("slide_id")["fold"]
    assert (
        preds["fold"].to_numpy() == test_of.loc[preds["slide_id"]].to_numpy()
    ).all()  # predicted in its own test fold
    with h5py.File(out / "attention" / "good" / "repeat0_fold0.h5", "r") as f:
        fold0 = set(preds[(preds["feature_set"] == "good") & (preds["fold"] == 0)]["slide_id"])
        assert set(f.keys()) == fold0
        slide = sorted(fold0)[0]
        n = len(planted["feats"][slide])
        assert f[slide]["attention"].shape == (n,) and f[slide]["coords"].shape == (n, 2)
        # float32 softmax of n <= 24 logits: each weight rounded (<= 2^-24 relative), summed in float32:
        # |sum - 1| <= ~2n * 2^-24 ~ 3e-6; abs 1e-5 covers it.
        assert f[slide]["attention"][()].sum() == pytest.approx(1.0, abs=1e-5)
    run = json.loads((out / "run.json").read_text())
    assert run["cohort"]["slides"] == 40 and run["config"]["mil"]["hidden"] == [32]
    md = (out / "summary.md").read_text()
    assert "Paired comparison with noise" in md


def test_missing_bags_drop_mode_and_clear_errors(planted, tmp_path):
    labels = pd.read_csv(planted["labels"])
    extra = pd.concat(
        [
            labels,
            pd.DataFrame(
                {"slide_id": ["TCGA-QQ-9999-01Z-00-DX1"], "case_id": ["TCGA-QQ-9999"], "label": ["ILC"]}
            ),
        ]
    )
    path = tmp_path / "labels.csv"
    extra.to_csv(path, index=False)
    task = dict(name="planted", bags=str(planted["root"]), label_map={"IDC": 0, "ILC": 1})
    base = dict(
        feature_sets=["good"],
        baseline=None,
        cv=CVSection(folds=2),
        mil=MILConfig(hidden=[8], epochs=1),
        progress=False,
        save_attention=False,
    )
    with pytest.raises(BagError, match="TCGA-QQ-9999-01Z-00-DX1"):
        run_benchmark(
            BenchmarkConfig(TaskSection(labels=str(path), **task), out_dir=str(tmp_path / "a"), **base)
        )
    with pytest.warns(BenchWarning, match="leaving out 1 labelled slide"):
        result = run_benchmark(
            BenchmarkConfig(
                TaskSection(labels=str(path), missing_bags="drop", **task),
                out_dir=str(tmp_path / "b"),
                **base,
            )
        )
    assert len(pd.read_csv(result["paths"]["predictions"])) == 40
    assert not (tmp_path / "b" / "attention").exists()
    with pytest.raises(InputError, match="needs a labels CSV"):
        run_benchmark(BenchmarkConfig(TaskSection(labels=None, **task), out_dir=str(tmp_path / "c"), **base))
    few = labels.copy()
    few.loc[few["label"] == "ILC", "label"] = ["ILC"] * 2 + ["IDC"] * (int((few["label"] == "ILC").sum()) - 2)
    few.to_csv(tmp_path / "few.csv", index=False)
    with pytest.raises(InputError, match="few.csv: a class has fewer patients than cross-validation folds"):
        run_benchmark(
            BenchmarkConfig(
                TaskSection(labels=str(tmp_path / "few.csv"), **task),
                out_dir=str(tmp_path / "d"),
                **{**base, "cv": CVSection(folds=3)},
            )
        )


def test_a_task_without_bags_names_what_to_pass(tmp_path):
    cfg = BenchmarkConfig(TaskSection(name="brca"), out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"task 'brca' needs its bags: task.bags=DIR.*zoomfeat.tasks brca"):
        Benchmark(cfg).run()


def test_torch_threads_are_restored():
    import torch

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("a failing run")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
