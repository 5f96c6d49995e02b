"""A full disk under a real extraction: a small tmpfs mounted as the output file system.

Before a slide is computed its expected bytes are checked against the free space and its bags'
blocks are reserved; a disk filled by someone else while a slide is being written lets that slide
finish in its reserved blocks and stops the run at the next one: one line naming the directory and
the space, nothing of that slide published, every finished bag intact, and a plain rerun completes
once space is freed. Both runs that stop are separate processes whose stderr is exactly the one
line (no HDF5 "Exception ignored in: ObjectID.__dealloc__" blocks beside it: the reservation means
HDF5 never meets a failed write).

Needs root (``mount -t tmpfs``); skipped where the mount is refused. Run as ``python -m
tests.test_disk_full DISK SLIDES_DIR OUT``, this module is the run that fills the disk during its
second slide (the test starts it)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.processes import STOP_RUN, command_line, read_bags, temporaries
from zoomfeat.cli import report_errors
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.runner import extract_slides
from zoomfeat.features.slide_extraction import SlideHooks
from zoomfeat.runtime.disk import free_bytes
from zoomfeat.slide.manifest import discover

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmpfs):
    """An 8 MB tmpfs (unmounted afterwards)."""
    return tmpfs(8)


def _fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free."""
    filler = disk / "filler.bin"
    with open(filler, "wb") as f:
        f.truncate(0)
        n = max(0, free_bytes(disk) - leave)
        f.write(b"\0" * n)
    return filler


def _fill_during_second_slide(disk: Path, slides: Path, out: Path) -> None:
    """The run the test starts (``python -m tests.test_disk_full``): an extraction whose second
    slide's first batch is followed by a filler that takes every free byte (another process filling
    the disk), errors printed as the command line prints them (:func:`zoomfeat.cli.report_errors`)."""
    state = {"slides": 0}

    def on_slide_start(plan) -> None:
        state["slides"] += 1

    def on_batch(done: int, total: int) -> None:
        if state["slides"] == 2 and not (disk / "filler.bin").exists():
            _fill(disk, leave=0)

    warnings.simplefilter("ignore")  # the tiny model's warnings: the run's stderr is its errors only
    hooks = SlideHooks(on_slide_start=on_slide_start, on_batch=on_batch)
    cfg = ExtractConfig.from_kwargs(**STOP_RUN)
    report_errors(
        "extract", lambda: extract_slides(discover([slides]), out, cfg, echo=lambda _: None, hooks=hooks)
    )


def test_full_disk_before_and_during_a_run(small_disk, stop_slides, stop_reference):
    """``stop_slides`` (three slides, tests/conftest.py); ``stop_reference``: their bags from an
    uninterrupted run with the same settings (``STOP_RUN``), shared with tests/test_signals.py."""
    slides = discover([stop_slides])
    cfg = ExtractConfig.from_kwargs(**STOP_RUN)
    want = stop_reference
    out = small_disk / "out"

    # before: a disk with less free space than a slide needs -> one line from the command line, exit 2
    filler = _fill(small_disk, leave=200_000)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = command_line(STOP_RUN)
    proc = subprocess.run([sys.executable, "-m", "zoomfeat.extract", str(stop_slides), f"out_dir={out}", *args],
                          env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and ": warning:" not in ln]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(
        f"zoomfeat extract: error: {out}: not enough free space for stop0's bags"
    ), lines
    assert "free some space or choose another out_dir, then rerun the same command" in lines[0]
    assert not read_bags(out) and not temporaries(out)
    filler.unlink()

    # during: the first slide finishes; the second one's first batch is followed by a filler that
    # takes every free byte. The second slide's blocks were reserved before any row was computed
    # (features/writer.py, _reserve), so it still finishes and HDF5 never meets a failed write; the
    # third slide stops the run with the one line, and stderr holds nothing else.
    proc = subprocess.run([sys.executable, "-m", "tests.test_disk_full", str(small_disk), str(stop_slides), str(out)],
                          env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"zoomfeat extract: error: {out}: not enough free space for stop2's bags"), (
        lines
    )
    assert "free some space or choose another out_dir, then rerun the same command" in lines[0]
    assert not temporaries(out)
    got = read_bags(out)  # the finished slides' bags intact, nothing of the third one published
    assert {k.split(":")[0].rsplit("/", 1)[1] for k in got} == {"stop0.h5", "stop1.h5"}
    assert all(np.array_equal(want[k], got[k]) for k in got)

    # space freed: the plain rerun completes, every bag equal to the uninterrupted run's
    (small_disk / "filler.bin").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert extract_slides(slides, out, cfg, echo=lambda _: None).ok
    got = read_bags(out)
    assert got.keys() == want.keys() and all(np.array_equal(want[k], got[k]) for k in want)


if __name__ == "__main__":
    _fill_during_second_slide(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
