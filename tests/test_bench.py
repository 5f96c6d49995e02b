"""``python -m zoomfeat.bench``: end-to-end on small bags from both sources, multirun, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from mil.bagfactory import planted_bags, write_bags

from tests.processes import run_entries
from zoomfeat.bench import run
from zoomfeat.cli import hydra_main

REPO = Path(__file__).resolve().parent.parent
SMALL = [
    "mil.hidden=[16]",
    "mil.att_dim=8",
    "mil.epochs=4",
    "mil.min_epochs=1",
    "progress=false",
    "threads=1",
]


def bench(*args):
    return hydra_main("bench", run, argv=list(args), inputs_key=None)


@pytest.fixture(scope="module")
def bag_root(tmp_path_factory):
    """zoomfeat.extract-style bag dirs for two feature sets (uni_20x, zoomldm_fused) + labels."""
    root = tmp_path_factory.mktemp("bench_bags")
    table, feats = planted_bags(n_cases=24, slides_per_case=2, dim=12, seed=7)
    rng = np.random.default_rng(0)
    write_bags(
        root / "20x_256px_0px_overlap",
        "uni_20x",
        {s: rng.normal(size=x.shape).astype(np.float32) for s, x in feats.items()},
    )
    write_bags(root / "20x_256px_0px_overlap", "zoomldm_fused", feats)
    table.to_csv(root / "labels.csv", index=False)
    return root


def test_cli_on_bag_dirs_then_reuse_splits(bag_root, tmp_path):
    out = tmp_path / "brca"
    cmd = [
        sys.executable, "-m", "zoomfeat.bench", "task=brca", f"task.labels={bag_root / 'labels.csv'}", f"task.bags={bag_root}",
        "feature_sets=[uni_20x,zoomldm_fused]", "cv.folds=3", "data.dtype=float32", f"out_dir={out}", *SMALL,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        "folds.csv",
        "summary.csv",
        "summary.md",
        "summary.png",
        "paired.csv",
        "predictions.csv",
        "splits.csv",
        "run.json",
        "report.html",
    ):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(f".{out.name}.run-*"))  # the staging directory was swapped in
    assert "data-key=" in (out / "report.html").read_text()  # the page (tests/mil/test_html_report.py)
    folds = pd.read_csv(out / "folds.csv")
    assert len(folds) == 6 and folds["n_test"].sum() == 2 * 48
    assert "Paired comparison with uni_20x" in (out / "summary.md").read_text()
    assert len(list((out / "attention" / "zoomldm_fused").glob("repeat0_fold*.h5"))) == 3
    assert not (REPO / "outputs").exists() or not any((REPO / "outputs").rglob("bench.yaml"))
    splits = pd.read_csv(out / "splits.csv")
    per_fold = splits[splits["part"] == "test"].groupby("fold")["case_id"].apply(set)
    assert sum(len(s) for s in per_fold) == 24  # patients, each tested once, both slides together

    # same folds again from the saved CSV, in-process, bags read from disk on each access:
    # identical predictions (deterministic; float32 both times)
    again = tmp_path / "again"
    bench("task=brca", f"task.labels={bag_root / 'labels.csv'}", f"task.bags={bag_root}", "feature_sets=[zoomldm_fused]",
          f"cv.splits={out / 'splits.csv'}", "cv.folds=7", "data.in_memory=false", f"out_dir={again}", *SMALL)  # fmt: skip
    first = (
        pd.read_csv(out / "predictions.csv").query("feature_set == 'zoomldm_fused'").reset_index(drop=True)
    )
    second = pd.read_csv(again / "predictions.csv").reset_index(drop=True)
    pd.testing.assert_frame_equal(first, second)


def test_cli_on_instance_csv_and_multirun(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for b in range(24):
        y = b % 2
        for _ in range(int(rng.integers(3, 8))):
            rows.append([y, b, *(rng.normal(size=6) + (2.0 * y if rng.random() < 0.5 else 0.0))])
    csv = tmp_path / "toy.csv"
    pd.DataFrame(rows).to_csv(csv, header=False, index=False)
    out = tmp_path / "sweep"
    bench(
        "-m",
        "task=musk1",
        f"task.bags={csv}",
        "task.name=toy",
        "mil.lr=1e-3,1e-4",
        "cv.folds=3",
        f"out_dir={out}",
        *SMALL,
    )
    jobs = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2 and all(j.startswith("mil.lr=") for j in jobs), jobs
    lrs = set()  # run.json keeps the settings in the YAML's shape
    for job in jobs:
        folds = pd.read_csv(out / job / "folds.csv")
        assert len(folds) == 3 and (folds["feature_set"] == "instances").all()
        lrs.add(json.loads((out / job / "run.json").read_text())["config"]["mil"]["lr"])
    assert lrs == {1e-3, 1e-4}


def test_cli_runs_the_shipped_musk_task(tmp_path):
    bench(
        "task=musk2",
        "cv.folds=2",
        "mil.epochs=1",
        "mil.min_epochs=1",
        "progress=false",
        f"out_dir={tmp_path}",
    )
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert len(folds) == 2 and folds["n_test"].sum() == 102


def bench_error(capsys, *args) -> str:
    """Run the CLI expecting failure; return what the user sees on stderr."""
    with pytest.raises(SystemExit):
        bench(*args)
    return capsys.readouterr().err


def test_cli_bad_input_messages(bag_root, tmp_path, capsys):
    err = bench_error(capsys, "task=brca", f"out_dir={tmp_path / 'a'}", *SMALL)
    assert "task 'brca' needs its bags: task.bags=DIR" in err and "python -m zoomfeat.tasks brca" in err
    labels = pd.read_csv(bag_root / "labels.csv").rename(columns={"label": "diagnosis"})
    labels.to_csv(tmp_path / "nolabel.csv", index=False)
    err = bench_error(
        capsys,
        "task=brca",
        f"task.labels={tmp_path / 'nolabel.csv'}",
        f"task.bags={bag_root}",
        "feature_sets=[uni_20x]",
        f"out_dir={tmp_path / 'b'}",
        *SMALL,
    )
    assert "nolabel.csv: no column(s) ['label']" in err and "diagnosis" in err
    err = bench_error(
        capsys,
        "task=brca",
        f"task.labels={bag_root / 'labels.csv'}",
        f"task.bags={bag_root}",
        f"out_dir={tmp_path / 'c'}",
        *SMALL,
    )
    assert "no bags for feature set 'uni_fused'" in err
    err = bench_error(capsys, "task=musk1", "+mil.bogus=1", f"out_dir={tmp_path / 'd'}", *SMALL)
    assert "unknown setting 'mil.bogus'; known keys under mil: name, arch, gated" in err


BAD_INPUTS = {
    "missing labels file": (["task.labels={tmp}/absent.csv"], "no labels file at"),
    "labels naming slides with no bag": (["task.labels={tmp}/extra.csv"], "labelled slide(s) have no bag"),
    "a class smaller than the folds": (
        ["task.labels={tmp}/few.csv", "cv.folds=3"],
        "few.csv: a class has fewer",
    ),
    "unknown key": (["+task.labal_col=x"], "unknown setting 'task.labal_col'"),
    "a patient whose slides carry different labels": (
        ["task.labels={tmp}/mixed.csv"],
        "mixed.csv: 1 patient(s) have slides with different labels",
    ),
    "a training part too small for its validation part": (
        ["task.labels={tmp}/two.csv", "cv.folds=2"],
        "two.csv: repeat 0 fold 0: the training part holds label 0: 1 patient(s)",
    ),
    "a truncated bag": (
        ["task.bags={tmp}/bad", "feature_sets=[truncated]"],
        "feature set 'truncated': damaged bag",
    ),
    "NaN features": (["task.bags={tmp}/bad", "feature_sets=[nan]"], "feature set 'nan': bag "),
    "one set written with two configs": (
        ["task.bags={tmp}/bad", "feature_sets=[mixed]"],
        "differences: h0 vs h1: timestep: 200 vs 300",
    ),
}


def write_bad_sets(root, labels):
    """``{root}/features_{truncated,nan,mixed}/`` for the cohort of ``labels`` (one spoiled bag each)."""
    from mil.bagfactory import COORDS_ATTRS

    from zoomfeat.bags import write_bag

    rng = np.random.default_rng(0)
    for name in ("truncated", "nan", "mixed"):
        for k, slide in enumerate(labels["slide_id"]):
            x = rng.normal(size=(5, 4)).astype(np.float32)
            t = 300 if name == "mixed" and k == 3 else 200
            attrs = {"config_hash": f"h{int(t == 300)}", "recipe": f'{{"timestep": {t}}}', "timestep": t}
            path = write_bag(
                root / f"features_{name}" / f"{slide}.h5", x, np.zeros((5, 2)), COORDS_ATTRS, attrs=attrs
            )
            if k == 3 and name == "truncated":
                path.write_bytes(path.read_bytes()[:1000])
            if k == 3 and name == "nan":
                with h5py.File(path, "a") as f:
                    f["features"][2, 1] = np.nan


def test_cli_prints_one_line_for_bad_inputs(bag_root, tmp_path):
    labels = pd.read_csv(bag_root / "labels.csv")
    extra = pd.DataFrame(
        {"slide_id": ["TCGA-QQ-9999-01Z-00-DX1"], "case_id": ["TCGA-QQ-9999"], "label": ["ILC"]}
    )
    pd.concat([labels, extra]).to_csv(tmp_path / "extra.csv", index=False)
    few = labels.copy()
    ilc = few.index[few["label"] == "ILC"]
    few.loc[ilc[4:], "label"] = "IDC"  # two ILC patients (two slides each) for three folds
    few.to_csv(tmp_path / "few.csv", index=False)
    mixed = labels.copy()
    mixed.loc[mixed.index[mixed["label"] == "IDC"][0], "case_id"] = mixed.loc[
        mixed["label"] == "ILC", "case_id"
    ].iloc[0]
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    two = pd.concat(
        [labels[labels["label"] == c].iloc[[0, 2]] for c in ("IDC", "ILC")]
    )  # 2 + 2 one-slide patients
    two.to_csv(tmp_path / "two.csv", index=False)
    write_bad_sets(tmp_path / "bad", labels)
    commands = []
    for what, (args, _) in BAD_INPUTS.items():
        args = [a.format(tmp=tmp_path) for a in args]
        keys = {a.split("=", 1)[0] for a in args}
        defaults = {
            "task.labels": bag_root / "labels.csv",
            "task.bags": bag_root,
            "feature_sets": "[uni_20x]",
        }
        args += [f"{k}={v}" for k, v in defaults.items() if k not in keys]
        commands.append(
            ("zoomfeat.bench", ["task=brca", *SMALL, *args, f"out_dir={tmp_path / what.replace(' ', '_')}"])
        )
    env = {k: v for k, v in os.environ.items() if k != "ZOOMFEAT_DEBUG"}
    # each command a process of its own, forked from one that imported torch once
    finished = run_entries(commands, cwd=REPO, env=env, timeout=300)
    for (what, (_, message)), (proc, _) in zip(BAD_INPUTS.items(), finished, strict=True):
        assert proc.returncode == 2, (what, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (what, proc.stderr[-2000:])
        errors = [line for line in proc.stderr.splitlines() if "zoomfeat bench: error:" in line]
        assert len(errors) == 1 and message in errors[0], (what, proc.stderr[-2000:])
