"""SIGTERM and Ctrl-C (SIGINT to the process group) to real ``python -m zoomfeat.bench`` runs.

A bench run writes into a staging directory and publishes it whole (zoomfeat/mil/run_dir.py), so
a stop keeps nothing of the run in hand: the staging directory goes, the previous run's outputs
stay byte for byte, stderr holds exactly one line ``zoomfeat bench: stopped by SIGTERM: ...``, the
exit status is 128 + signal and no process is left. The plain rerun's summary and predictions
equal an uninterrupted run's.

Tiny planted bags (16 slides, 8 features), 2 folds, 10 epochs, no bootstrap: the tests time
signals, not learning. Every process runs with one OpenMP/MKL/torch thread and a bounded
timeout; leftovers are killed in a finally."""

from __future__ import annotations

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

from tests.mil.bagfactory import planted_bags, write_bags
from tests.processes import descendants, interrupt, kill_tree, left_alive
from zoomfeat.bench import run
from zoomfeat.cli import hydra_main

REPO = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_signal_bags")
    table, feats = planted_bags(n_cases=16, slides_per_case=1, dim=8, seed=3)
    write_bags(root, "good", feats)
    rng = np.random.default_rng(0)
    write_bags(root, "noise", {s: rng.normal(size=x.shape).astype(np.float32) for s, x in feats.items()})
    table.to_csv(root / "labels.csv", index=False)
    return root


def _bench_args(bags: Path, out: Path) -> list[str]:
    return [
        "task=brca", f"task.labels={bags / 'labels.csv'}", f"task.bags={bags}", "feature_sets=[noise,good]",
        "baseline=noise", "cv.folds=2", "mil.hidden=[16]", "mil.att_dim=8", "mil.epochs=10", "mil.min_epochs=1",
        "mil.warmup=0", "bootstrap=0", "save_models=false", "progress=false", "threads=1", f"out_dir={out}",
    ]  # fmt: skip


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a run directory by relative path (Hydra's logs aside)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".hydra" not in p.relative_to(out).parts
    }


def _staging(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.run-*")) + sorted(out.parent.glob(f".{out.name}.old-*"))


def _interrupt(args: list[str], out: Path, signum: int) -> tuple[int, str, list[int]]:
    """Start the bench in its own process group, wait until its first fold is written in its
    staging directory, send ``signum`` (SIGINT to the whole group, as a terminal's Ctrl-C; SIGTERM
    to the main process, as ``kill``); (exit status, stderr, child processes seen)."""
    cmd = [sys.executable, "-m", "zoomfeat.bench", *args]
    run_ = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    children: list[int] = []
    try:
        first_fold = out.parent / f".{out.name}.run-{run_.pid}" / "predictions.csv"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run_.poll() is None and not first_fold.exists():
            children = descendants(run_.pid) or children
            time.sleep(0.02)
        assert run_.poll() is None and first_fold.exists(), run_.communicate()[1][-3000:]
        err = interrupt(run_, signum)
        return run_.returncode, err, children
    finally:
        kill_tree(run_)


def test_bench_stops_on_signals_and_a_rerun_equals_an_uninterrupted_run(bags, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    hydra_main("bench", run, argv=_bench_args(bags, ref), inputs_key=None)  # the uninterrupted run
    want = _files(ref)
    shutil.copytree(ref, out)  # out_dir holds a previous complete run
    before = _files(out)

    for signum in (signal.SIGTERM, signal.SIGINT):
        rc, err, children = _interrupt(_bench_args(bags, out), out, signum)
        name = signal.Signals(signum).name
        assert rc == 128 + signum, err[-3000:]
        lines = err.splitlines()  # exactly the one line: no trace, no warning, no log
        assert len(lines) == 1 and lines[0].startswith(f"zoomfeat bench: stopped by {name}: "), err[-3000:]
        assert f"{out} is left as it was" in lines[0] and "rerun the same command" in lines[0], lines[0]
        assert _files(out) == before  # the previous run's files, byte for byte, and nothing else
        assert _staging(out) == []  # the stopped run's staging directory is gone
        assert not left_alive(children)

    started = time.time_ns()
    hydra_main("bench", run, argv=_bench_args(bags, out), inputs_key=None)  # the plain rerun
    got = _files(out)
    assert all((out / name).stat().st_mtime_ns >= started for name in got)  # all written by the rerun
    for name in ("summary.csv", "predictions.csv", "splits.csv"):
        assert got[name] == want[name], name
    timeless = ["seconds"]  # folds.csv: everything but the wall time of each fold
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "folds.csv").drop(columns=timeless),
        pd.read_csv(ref / "folds.csv").drop(columns=timeless),
    )
    assert _staging(out) == []
