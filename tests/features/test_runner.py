"""zoomfeat.features.runner through the CLI: shards under Hydra's joblib launcher, kills, corrupt slides."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zoomfeat.bags import FEATURE_SETS, bag_is_complete, bag_path, open_bag
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.runner import extract_slides
from zoomfeat.features.writer import slide_outputs
from zoomfeat.runtime.errors import ConfigMismatchError
from zoomfeat.slide.manifest import discover

REPO = Path(__file__).resolve().parents[2]
TINY_ARGS = ["model=tiny", "encoder=tiny", "tissue.min_tissue=0.5", "progress=false"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "zoomfeat.extract", *args]


def _assert_same_bags(out_a: Path, out_b: Path, slide_id: str, atol: float = 0.0) -> None:
    for name in FEATURE_SETS:
        a, b = open_bag(bag_path(out_a, name, slide_id)), open_bag(bag_path(out_b, name, slide_id))
        if atol:
            np.testing.assert_allclose(
                a.features, b.features, rtol=0, atol=atol, err_msg=f"{slide_id} {name}"
            )
        else:
            np.testing.assert_array_equal(a.features, b.features, err_msg=f"{slide_id} {name}")
        np.testing.assert_array_equal(a.coords, b.coords)
        assert a.attrs["config_hash"] == b.attrs["config_hash"]


def test_two_shards_under_hydra_joblib_multirun_match_one_run(reference_run, small_slides, tmp_path):
    """Same batch size, 2 workers instead of 0, each slide in its own shard job.

    joblib's loky workers run torch with 1 thread (cpu_count // n_jobs) where the reference ran
    with 2, and oneDNN's reductions depend on the thread count: equal to float32 rounding
    (measured <= 1e-6), not bitwise. At equal thread counts, worker count and process do not
    change a bit (the kill/rerun test below compares a 1-worker CLI run bitwise).
    """
    out = tmp_path / "sharded"
    cmd = _cli(
        str(small_slides), "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "shard.count=2", "shard.index=0,1", f"out_dir={out}", "batch_size=3", "num_workers=2", *TINY_ARGS,
    )  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logs = sorted(p.name.rsplit("_", 1)[1] for p in (out / "logs").glob("*.csv"))
    assert logs == ["shard0of2.csv", "shard1of2.csv"]
    for slide_id in ("det_a", "det_b"):
        _assert_same_bags(reference_run, out, slide_id, atol=1e-5)


def test_changed_config_stops_the_run_before_any_work(reference_run, small_slides, tmp_path, tiny):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    with pytest.raises(
        ConfigMismatchError, match=r"2 slide\(s\) already have bags.*timestep: 200 -> 250.*overwrite=true"
    ):
        extract_slides(
            discover([small_slides]), out, ExtractConfig.from_kwargs(**tiny, **{"features.timestep": 250})
        )
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    summary = extract_slides(discover([small_slides]), out, ExtractConfig.from_kwargs(**tiny, batch_size=5))
    assert [r.status for r in summary.results] == ["skipped", "skipped"] and summary.ok


def test_killed_run_leaves_no_complete_looking_file_and_rerun_finishes(
    reference_run, small_slides, tmp_path, monkeypatch, capsys
):
    slides, out = tmp_path / "slides", tmp_path / "out"
    shutil.copytree(small_slides, slides)
    args = [str(slides), f"out_dir={out}", "batch_size=3", "num_workers=1", *TINY_ARGS]
    proc = subprocess.Popen(
        _cli(*args), cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # det_a comes first; kill the whole process group (workers too) once det_b is under way
        deadline = time.monotonic() + 300
        while not list(out.rglob(".det_b.h5.tmp-*")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "det_b never started"
            time.sleep(0.02)
        time.sleep(0.5)
        assert proc.poll() is None, "det_b finished before the kill; slow the run down"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # det_a finished, det_b left only hidden temporaries: nothing under a final name
    assert all(bag_is_complete(p) for p in slide_outputs(out, "det_a").values())
    assert not any(p.exists() for p in slide_outputs(out, "det_b").values())
    assert not [p for p in out.rglob("det_b*.h5")]
    assert list(out.rglob(".det_b.h5.tmp-*"))

    # rerun over the same directory plus a corrupt slide: det_a skipped, det_b done, corrupt reported.
    # The same command through its entry function in this process (the killed run was the
    # process; same torch thread count, OMP_NUM_THREADS, as the command and the reference)
    from zoomfeat.extract import main

    (slides / "broken.svs").write_bytes(b"II*\x00" + os.urandom(4096))
    monkeypatch.setattr(sys, "argv", _cli(*args)[2:])
    with pytest.raises(SystemExit) as rerun:
        main()
    text = "".join(capsys.readouterr())
    assert rerun.value.code == 1, text
    assert "det_a: skipped" in text and "det_b: 3 20x + 1 5x tiles" in text
    assert "1 extracted" in text and "1 already complete" in text and "1 failed" in text
    assert "FAILED slides:" in text and "broken.svs" in text
    assert all(bag_is_complete(p) for p in slide_outputs(out, "det_b").values())
    assert not list(out.rglob("*.tmp-*"))
    _assert_same_bags(reference_run, out, "det_b")


def test_two_shards_under_hydra_submitit_local_launcher_match_one_run(
    reference_run, small_slides, tmp_path, batch_atol
):
    """The SLURM route on this machine: Hydra's submitit launcher with its local executor runs the
    same job code as ``submitit_slurm`` (pickled task, one process per array task, job folders).

    Threads: OMP_NUM_THREADS=1 in the environment the jobs inherit and ``cpus_per_task=1``; the
    reference ran in-process with 2 threads, so features agree to the thread-count rounding
    (measured <= 1e-6, bound ``batch_atol``), coords and config hash exactly.
    """
    import csv

    out = tmp_path / "submitit"
    cmd = _cli(
        str(small_slides), "--multirun", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10", "shard.count=2", "shard.index=0,1", f"out_dir={out}", "batch_size=3",
        "num_workers=0", *TINY_ARGS,
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = sorted((out / ".hydra" / "multirun").glob("*/.submitit/*/*_result.pkl"))
    assert len(jobs) == 2, "expected two submitit jobs"
    done: list[str] = []
    for log in sorted((out / "logs").glob("*.csv")):
        with open(log) as f:
            done += [row["slide_id"] for row in csv.DictReader(f) if row["status"] == "done"]
    assert sorted(done) == ["det_a", "det_b"]  # every slide done once, across the two jobs
    for slide_id in ("det_a", "det_b"):
        assert all(bag_is_complete(p) for p in slide_outputs(out, slide_id).values())
        _assert_same_bags(reference_run, out, slide_id, atol=batch_atol)
