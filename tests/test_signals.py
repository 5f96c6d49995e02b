"""SIGTERM and Ctrl-C (SIGINT to the process group) to real ``prepare`` runs: the slide in hand is
abandoned and its temporary shards removed, the DataLoader worker ends, one line says what was
finished and how to resume, the exit status is 128 + signal; a plain rerun completes and its shards
equal an uninterrupted run's. The same for ``extract`` (one process, and ``devices=[cpu,cpu]``).
(``train``'s stops: tests/training/test_stop.py.)

The runs that are stopped are processes; the uninterrupted runs and the reruns they are compared
with run the same command through its entry function in this process (one torch
thread, as the processes have), which spares a torch import each.

Every process runs with one OpenMP/MKL/torch thread and a bounded timeout; leftovers are killed in
a finally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.processes import (
    STOP_RUN,
    command_line,
    descendants,
    interrupt,
    kill_tree,
    left_alive,
    read_bags,
    temporaries,
)
from zoomfeat.cli import hydra_main
from zoomfeat.training.shards import ShardIndex, read_record

REPO = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _prepare_args(slides: list[Path], out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "zoomfeat.prepare", *map(str, slides), f"out_dir={out}", "model=tiny",
            "encoder=tiny", "mags=[20x,5x]", f"num_workers={workers}", "batch_size=4", "progress=false",
            "device=cpu"]  # fmt: skip


def _prepare_here(slides: list[Path], out: Path) -> None:
    """The uninterrupted ``prepare`` command of :func:`_prepare_args`, in this process (its entry
    function; one torch thread, as the processes have)."""
    from zoomfeat.prepare import run

    summary = hydra_main("prepare", run, argv=_prepare_args(slides, out, 0)[3:])
    assert sorted([*summary["done"], *summary["skipped"]]) == sorted(s.stem for s in slides), summary
    assert not summary["failed"], summary


def _slide_rows(out: Path, slide_id: str) -> dict[str, np.ndarray]:
    """Every array of a prepared slide, magnification by magnification, read from its shard."""
    rows = {}
    for m, entry in sorted(read_record(out, slide_id)["mags"].items()):
        with h5py.File(out / entry["file"], "r") as f:
            sl = slice(entry["start"], entry["start"] + entry["count"])
            for key in ("latent", "ssl", "coords"):
                rows[f"{m}/{key}"] = f[key][sl]
    return rows


@pytest.fixture(scope="module")
def slides(synthetic_slide_factory):
    return [
        synthetic_slide_factory(
            f"sig{k}", width=1024, height=1024, mpp=0.5, levels=2, seed=k, tissue_fraction=0.6
        )
        for k in range(1)  # stopped in its first slide: a second one would only be computed by the reruns
    ]


def _interrupt(
    args: list[str], out: Path, signum: int, *, need_workers: bool = True
) -> tuple[int, str, list[int]]:
    """Start ``args`` in its own process group, wait until a slide is half written (a temporary
    shard exists) and the DataLoader worker runs, send ``signum`` (SIGINT to the whole group, as a
    terminal's Ctrl-C; SIGTERM to the main process, as ``kill``); (exit status, stderr, workers)."""
    run = subprocess.Popen(args, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            workers = descendants(run.pid) or workers
            if temporaries(out) and (workers or not need_workers):
                break
            time.sleep(0.02)
        assert run.poll() is None, run.communicate()[1][-3000:]
        err = interrupt(run, signum)
        return run.returncode, err, workers
    finally:
        kill_tree(run)


def test_prepare_stops_on_signals_and_a_rerun_completes(tmp_path, slides, one_thread):
    ref, out = tmp_path / "ref", tmp_path / "out"
    _prepare_here(slides, ref)  # the uninterrupted run

    for signum in (signal.SIGTERM, signal.SIGINT):
        rc, err, workers = _interrupt(_prepare_args(slides, out, 1), out, signum)
        name = signal.Signals(signum).name
        assert rc == 128 + signum, err[-3000:]
        assert "Traceback" not in err
        lines = [ln for ln in err.splitlines() if ln.strip() and ": warning:" not in ln]
        assert len(lines) == 1 and lines[0].startswith(f"zoomfeat prepare: stopped by {name}: "), err
        assert "abandoned (its temporary shards removed)" in lines[0] and "Rerun the same command" in lines[0]
        assert not temporaries(out)  # the abandoned slide left nothing behind
        assert workers and not left_alive(workers)  # nor a worker process
        assert not [s for s in slides if read_record(out, s.stem)]  # the slide was abandoned, not recorded

    _prepare_here(slides, out)  # the plain rerun
    assert ShardIndex.load(out).counts() == ShardIndex.load(ref).counts()
    for s in slides:
        a, b = _slide_rows(ref, s.stem), _slide_rows(out, s.stem)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), s.stem


# ------------------------------------------------------------------------------------ extraction


@pytest.fixture(scope="module")
def two_slides(stop_slides, tmp_path_factory) -> Path:
    """The first two of ``stop_slides`` (tests/conftest.py): both device workers hold a slide when
    the run is stopped, and a third would only be computed by the reruns."""
    d = tmp_path_factory.mktemp("two_stop_slides")
    for name in ("stop0.svs", "stop1.svs"):
        (d / name).symlink_to(stop_slides / name)
    return d


def _extract_args(slides_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "zoomfeat.extract",
        str(slides_dir),
        f"out_dir={out}",
        *command_line(STOP_RUN),
        *extra,
    ]


@pytest.mark.parametrize(
    ("signum", "devices"),
    [(signal.SIGINT, None), (signal.SIGTERM, "devices=[cpu,cpu]")],
    ids=["sigint-one-process", "sigterm-devices-cpu-cpu"],
)
def test_extract_stops_on_a_signal_and_a_rerun_equals_an_uninterrupted_run(
    tmp_path, two_slides, stop_reference, one_thread, monkeypatch, signum, devices
):
    """Ctrl-C (SIGINT to the process group) to a one-process run, SIGTERM to the main process of a
    ``devices=[cpu,cpu]`` run, each while a slide is half written (a temporary bag exists): one line,
    exit 128 + signal, no temporary and no lock left, every worker process gone; the plain rerun's
    bags equal those of an uninterrupted run (``stop_reference``, tests/conftest.py) bit for bit
    (same batch size, one thread everywhere). The rerun is the same command run by its entry
    function in this process (one torch thread; with ``devices`` it starts its device workers)."""
    from zoomfeat.extract import run

    out = tmp_path / "out"
    extra = [devices] if devices else []
    args = _extract_args(two_slides, out, *extra)
    rc, err, workers = _interrupt(args, out, signum, need_workers=bool(devices))
    name = signal.Signals(signum).name
    assert rc == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and ": warning:" not in ln]
    assert len(lines) == 1 and lines[0].startswith(f"zoomfeat extract: stopped by {name}: "), err
    assert "abandoned (nothing of it published" in lines[0] and "Rerun the same command" in lines[0], lines[0]
    assert not temporaries(out) and not list(out.rglob("*.lock"))
    if devices:
        assert workers and not left_alive(workers)  # both device workers ended
    assert list((out / "logs").glob("extract_*.csv"))  # the run's log is written

    for k, v in ENV.items():  # what the stopped run had; the device workers inherit it
        monkeypatch.setenv(k, v)
    summary = hydra_main("extract", run, argv=args[3:])
    assert summary.ok and [r.status for r in summary.results] == ["done"] * 2, summary.report()
    want = {k: v for k, v in stop_reference.items() if Path(k.split(":")[0]).stem in ("stop0", "stop1")}
    got = read_bags(out)
    assert want.keys() == got.keys() and want
    assert all(np.array_equal(want[k], got[k]) for k in want)


# ------------------------------------------------------------------------- every entry point


def test_every_entry_point_prints_a_stop_as_one_line(capsys):
    """``cli.report_errors`` (every entry point runs its task through it): a task that polls
    nothing is stopped at once by the first signal; a workflow under ``run_stoppable`` is only
    flagged and stops at its next poll with its own message. Either way: one line on stderr,
    exit status 128 + signal, the previous handlers restored."""
    from zoomfeat.cli import report_errors
    from zoomfeat.runtime import stopping

    # what the test process had (SIGINT is SIG_IGN when pytest runs as a background job, e.g. nohup)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def busy() -> None:  # work that polls nothing (loading weights, reading a config ...)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises out of the sleep; 30 s only if it did not

    started = time.monotonic()
    with pytest.raises(SystemExit) as stop:
        report_errors("heatmap", busy)
    assert stop.value.code == 143 and time.monotonic() - started < 10
    err = capsys.readouterr().err.splitlines()
    assert err == [f"zoomfeat heatmap: stopped by SIGTERM: stopped at once; {stopping.AT_ONCE}"], err

    polled: list[int] = []

    def workflow() -> None:  # polls between its units, as extraction and training do
        for unit in range(1000):
            if unit == 3:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: only flagged, the unit finishes
            polled.append(unit)
            stopping.check(f"{unit + 1} unit(s) finished; rerun the same command to continue")

    with pytest.raises(SystemExit) as stop:
        report_errors("prepare", lambda: stopping.run_stoppable("prepare", workflow))
    assert stop.value.code == 130 and polled == [0, 1, 2, 3]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "zoomfeat prepare: stopped by SIGINT: 4 unit(s) finished; rerun the same command to continue"
    ]
    assert {s: signal.getsignal(s) for s in before} == before
