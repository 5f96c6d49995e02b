"""One run's outputs belong to one run (zoomfeat/mil/run_dir.py), tried as a user would.

Real ``python -m zoomfeat.bench`` processes on small bags, stopped and killed with real signals:

* two runs into one out_dir at the same time: the second is refused with one line naming the
  first's pid, the first finishes and its outputs are all its own;
* a second run into the same out_dir leaves none of the first run's files (paired.csv,
  attention maps, heatmaps) beside its own;
* a rerun stopped by SIGTERM after its first fold leaves the previous run's files byte for byte
  and no partial file anywhere (status 143, one line saying so).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoomfeat.mil.benchmark import run_benchmark
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection
from zoomfeat.runtime.errors import OutputError

from .bagfactory import planted_bags, write_bags

REPO = Path(__file__).resolve().parents[2]
#: the child processes use one thread each, so the 2-core CI machine is not oversubscribed
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
SMALL = [
    "mil.hidden=[16]",
    "mil.att_dim=8",
    "mil.min_epochs=1",
    "mil.warmup=0",
    "progress=false",
    "threads=1",
]
FAST = MILConfig(hidden=[16], att_dim=8, epochs=2, min_epochs=1, patience=2, warmup=0)
N_SLIDES = 16  # small: the tests time processes and signals, not learning


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_dir_bags")
    table, feats = planted_bags(n_cases=N_SLIDES, slides_per_case=1, dim=8, seed=3)
    write_bags(root, "good", feats)
    rng = np.random.default_rng(0)
    write_bags(root, "noise", {s: rng.normal(size=x.shape).astype(np.float32) for s, x in feats.items()})
    table.to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture(scope="module")
def finished_run(bags, tmp_path_factory) -> Path:
    """One finished run (attention saved), made once: tests that need a previous run in out_dir
    start from a copy of it (``previous_run``)."""
    out = tmp_path_factory.mktemp("finished_run") / "out"
    run_benchmark(config(bags, out, save_attention=True))
    return out


@pytest.fixture
def previous_run(finished_run, tmp_path) -> Path:
    """``tmp_path / "out"``: a copy of the finished run, as if it had been run there."""
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    return out


def bench_cmd(bags: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "zoomfeat.bench", "task=brca", f"task.labels={bags / 'labels.csv'}", f"task.bags={bags}",
        "feature_sets=[noise,good]", "baseline=noise", "cv.folds=2", *SMALL, f"out_dir={out}", *extra,
    ]  # fmt: skip


def config(bags: Path, out: Path, **kw) -> BenchmarkConfig:
    kw = {"feature_sets": ["noise", "good"], "baseline": "noise", "cv": CVSection(folds=2), **kw}
    task = TaskSection(
        name="brca", labels=str(bags / "labels.csv"), bags=str(bags), label_map={"IDC": 0, "ILC": 1}
    )
    return BenchmarkConfig(task=task, out_dir=str(out), mil=FAST, progress=False, threads=1, **kw)


def snapshot(out: Path) -> dict[str, str]:
    """{relative path: sha256} of every file of a run directory (Hydra's logs aside)."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".hydra" not in p.relative_to(out).parts
    }


def staging_dirs(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.run-*"))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll until ``path`` exists; fail with the child's stderr if it ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (rc {proc.returncode}) before {path.name} appeared: {proc.stderr.read()[-2000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def test_a_concurrent_run_is_refused_and_the_first_keeps_its_outputs(bags, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(
        bench_cmd(bags, out, "mil.epochs=2", "seed=0"), cwd=REPO, env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        # the first run holds the lock from the moment its staging directory exists; freeze it there
        # (SIGSTOP) so that the second run surely starts while the first is still running
        wait_for(out.parent / f".{out.name}.run-{first.pid}", first)
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run(
            bench_cmd(bags, out, "mil.epochs=2", "seed=1"),
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [ln for ln in second.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [
        f"zoomfeat bench: error: {out}: another benchmark run (pid {first.pid}) is writing this out_dir; "
        "wait for it to finish or choose another out_dir="
    ], second.stderr
    assert "Traceback" not in second.stderr
    # everything in out_dir is the first run's: its seed, its splits, all its predictions
    assert json.loads((out / "run.json").read_text())["config"]["seed"] == 0
    splits = pd.read_csv(out / "splits.csv")
    preds = pd.read_csv(out / "predictions.csv")
    folds = pd.read_csv(out / "folds.csv")
    assert len(preds) == 2 * N_SLIDES and len(folds) == 2 * 2
    assert folds["n_test"].sum() == 2 * N_SLIDES
    assert set(preds["slide_id"]) == set(splits["slide_id"])
    assert staging_dirs(out) == []


def test_a_second_run_leaves_nothing_of_the_first(bags, previous_run, tmp_path):
    out = previous_run
    assert (out / "paired.csv").is_file() and (out / "attention" / "good").is_dir()
    (out / "heatmaps").mkdir()
    (out / "heatmaps" / "slide.png").write_bytes(b"a heatmap drawn from the first run's attention")
    hydra_log = out / ".hydra" / "2026-01-01_00-00-00" / "bench.log"
    hydra_log.parent.mkdir(parents=True)
    hydra_log.write_text("Hydra's log of the first run\n")
    stale = tmp_path / ".out.run-999999"  # a SIGKILL-ed run's staging directory
    stale.mkdir()
    (stale / "predictions.csv").write_text("partial\n")

    first = set(snapshot(out))
    started = time.time_ns()
    result = run_benchmark(config(bags, out, feature_sets=["good"], baseline=None, save_attention=False))
    # every file in out_dir was written by the second run (Hydra's logs aside): none is older
    files = [out / name for name in snapshot(out)]
    old = [str(p.relative_to(out)) for p in files if p.stat().st_mtime_ns < started]
    assert old == [], old
    assert {p.resolve() for p in result["paths"].values() if p.is_file()} <= {p.resolve() for p in files}
    assert len(first - set(snapshot(out))) > 0  # the first run had files the second does not write
    for gone in ("paired.csv", "attention", "heatmaps"):
        assert not (out / gone).exists(), gone
    assert set(pd.read_csv(out / "folds.csv")["feature_set"]) == {"good"}
    assert hydra_log.read_text() == "Hydra's log of the first run\n"  # Hydra's logs stay with out_dir
    assert staging_dirs(out) == [] and not stale.exists()


def test_sigterm_mid_run_leaves_the_previous_outputs_untouched(bags, previous_run):
    out = previous_run
    before = snapshot(out)
    proc = subprocess.Popen(
        bench_cmd(bags, out, "mil.epochs=2", "seed=5", "cv.folds=4"), cwd=REPO, env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    # the rerun's first fold is done when its predictions.csv appears in its staging directory
    wait_for(out.parent / f".{out.name}.run-{proc.pid}" / "predictions.csv", proc)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.splitlines()[-1].startswith(
        "zoomfeat bench: stopped by SIGTERM: nothing of this run was published"
    ), stderr[-3000:]
    assert f"{out} is left as it was" in stderr.splitlines()[-1]
    assert "Traceback" not in stderr
    assert snapshot(out) == before  # the previous run's files, byte for byte, and nothing else
    assert staging_dirs(out) == []
    assert not any(p.name.startswith(".") and ".tmp-" in p.name for p in out.rglob("*"))


def test_an_out_dir_holding_other_files_is_refused_not_deleted(bags, tmp_path):
    (tmp_path / "my_notes.txt").write_text("not a benchmark output\n")
    with pytest.raises(
        OutputError, match=r"out_dir holds files that are not a benchmark run's \(my_notes.txt\)"
    ):
        run_benchmark(config(bags, tmp_path))
    assert (tmp_path / "my_notes.txt").read_text() == "not a benchmark output\n"


def test_inputs_inside_out_dir_are_refused_not_deleted(bags, previous_run):
    out = previous_run
    labels = out / "my_labels.csv"  # a labels file kept in the previous run's directory
    labels.write_bytes((bags / "labels.csv").read_bytes())
    cfg = config(bags, out)
    cfg.task.labels = str(labels)
    with pytest.raises(
        OutputError, match=r"my_labels.csv \(task.labels=\) lies inside out_dir .*replaces as a whole"
    ):
        run_benchmark(cfg)
    assert labels.read_bytes() == (bags / "labels.csv").read_bytes()
