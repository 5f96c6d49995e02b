"""``python -m zoomfeat.train`` stopped by SIGTERM and by Ctrl-C (SIGINT to the process group) in
real subprocesses: one line, exit 143 / 130, a checkpoint of the last finished step, no
temporaries, no process left; plain reruns resume and end bitwise equal to an uninterrupted run.

Every process runs with one OpenMP/MKL thread and ``threads=1`` (the exact-resume promise holds
for the same machine and thread count); each is bounded by a timeout and killed in a finally."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.processes import alive, descendants, interrupt, kill_tree
from zoomfeat.runtime import checkpoints as ck

from .conftest import ONE_THREAD_ENV
from .test_trainer import _tensors

REPO = Path(__file__).resolve().parents[2]
STEPS = 12


def _args(data: Path, out: Path, **kw) -> list[str]:
    settings = dict(
        data=data, out_dir=out, model="tiny", steps=STEPS, batch_size=2, lr="1e-3", warmup_steps=2,
        device="cpu", threads=1, log_every=1, progress="false", checkpoint_every=100,
        **{"samples.enabled": "false"},
    )  # fmt: skip
    settings.update(kw)
    return [sys.executable, "-m", "zoomfeat.train", *(f"{k}={v}" for k, v in settings.items())]


def _env() -> dict[str, str]:
    return {**os.environ, **ONE_THREAD_ENV, "PYTHONPATH": str(REPO)}


def _interrupt(args: list[str], out: Path, signum: int, after_steps: int) -> tuple[int, str, list[int]]:
    """Start a run in its own process group, wait until it logged ``after_steps`` steps and has its
    DataLoader worker, send ``signum`` (SIGINT to the whole group, as a terminal's Ctrl-C does;
    SIGTERM to the main process, as ``kill`` does); returns (exit status, stderr, workers seen)."""
    log = out / "train_log.jsonl"
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            n = len(log.read_text().splitlines()) if log.is_file() else 0
            workers = descendants(proc.pid) or workers
            if n >= after_steps and workers:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        err = interrupt(proc, signum)
        return proc.returncode, err, workers
    finally:
        kill_tree(proc)


def _stop_line(err: str, signame: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and "warning" not in ln]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith(
        f"zoomfeat train: stopped by {signame}: stopped after step "
    ), err
    return lines[0]


def test_signals_stop_train_and_reruns_resume_exactly(tmp_path, data):
    a, b = tmp_path / "a", tmp_path / "b"
    # the uninterrupted run A runs beside the stopped ones (independent; one thread each, 2 cores)
    run_a = subprocess.Popen(
        _args(data, a), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _stop_and_rerun(data, b)
        a_err = run_a.communicate(timeout=300)[1]
    finally:
        if run_a.returncode is None:
            kill_tree(run_a)
    assert run_a.returncode == 0, a_err[-3000:]
    ta, tb = _tensors(ck.find_latest(a)), _tensors(ck.find_latest(b))
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, differ[:10]


def _stop_and_rerun(data: Path, b: Path) -> None:
    """SIGTERM, then SIGINT to the resumed run, then the plain rerun to the end, all in ``b``."""
    # SIGTERM (a scheduler's end of job): the step finishes, a checkpoint of it, exit 143
    rc, err, workers = _interrupt(_args(data, b, num_workers=1), b, signal.SIGTERM, after_steps=2)
    assert rc == 143, err[-3000:]
    line = _stop_line(err, "SIGTERM")
    step = int(line.split("stopped after step ")[1].split()[0])
    assert 2 <= step < STEPS and f"step-{step:08d}" in line and "rerun the same command" in line
    assert ck.find_latest(b).name == f"step-{step:08d}" and ck.read_state(ck.find_latest(b))["step"] == step
    assert not [p for p in (b / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporaries
    assert workers and not [p for p in workers if alive(p)]  # the DataLoader worker is gone too
    assert len((b / "train_log.jsonl").read_text().splitlines()) == step

    # Ctrl-C to the whole process group (worker included) of the resumed run: exit 130
    rc, err, workers = _interrupt(_args(data, b, num_workers=1), b, signal.SIGINT, after_steps=step + 2)
    assert rc == 130, err[-3000:]
    step2 = int(_stop_line(err, "SIGINT").split("stopped after step ")[1].split()[0])
    assert step < step2 < STEPS and ck.find_latest(b).name == f"step-{step2:08d}"
    assert workers and not [p for p in workers if alive(p)]

    # the plain rerun resumes to the end (and ends equal to the uninterrupted run: the test)
    proc = subprocess.run(_args(data, b), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["train"]
    assert summary["start_step"] == step2 and summary["step"] == STEPS
