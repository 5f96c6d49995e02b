"""A full disk under a real extraction: a small tmpfs mounted as the output file system.

Before a slide is computed its expected bytes are checked against the free space and its bags'
blocks are reserved; a disk filled by someone else while a slide is being written lets that slide
finish in its reserved blocks and stops the run at the next one: one line naming the directory and
the space, nothing of that slide published, every finished bag intact, and a plain rerun completes
once space is freed.

Needs root (``mount -t tmpfs``); skipped where the mount is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.runner import extract_slides
from zoomfeat.features.slide_extraction import SlideHooks
from zoomfeat.runtime.disk import DiskFullError, free_bytes
from zoomfeat.slide.manifest import discover

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = {"model": "tiny", "encoder": "tiny", "tissue.min_tissue": 0.5, "progress": False, "batch_size": 8,
        "num_workers": 0}  # fmt: skip


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs (unmounted afterwards)."""
    d = tmp_path / "disk"
    d.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free."""
    filler = disk / "filler.bin"
    with open(filler, "wb") as f:
        f.truncate(0)
        n = max(0, free_bytes(disk) - leave)
        f.write(b"\0" * n)
    return filler


def _bags(out: Path) -> dict[str, np.ndarray]:
    got = {}
    for p in sorted(out.rglob("*.h5")):
        if "features_" in p.parent.name:
            with h5py.File(p, "r") as f:
                got[f"{p.relative_to(out)}:features"] = f["features"][()]
    return got


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def slides_dir(synthetic_slide_factory, tmp_path_factory):
    d = tmp_path_factory.mktemp("disk_slides")
    for k in range(3):
        p = synthetic_slide_factory(
            f"full{k}", width=1024, height=1024, mpp=0.5, levels=2, seed=20 + k, tissue_fraction=0.5
        )
        (d / p.name).symlink_to(p)
    return d


def test_full_disk_before_and_during_a_run(tmp_path, small_disk, slides_dir):
    slides = discover([slides_dir])
    cfg = ExtractConfig.from_kwargs(**TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tmp_path / "ref"
        assert extract_slides(slides, ref, cfg, echo=lambda _: None).ok
    want = _bags(ref)
    out = small_disk / "out"

    # before: a disk with less free space than a slide needs -> one line from the command line, exit 2
    filler = _fill(small_disk, leave=200_000)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = [f"{k}={v}".replace("True", "true").replace("False", "false") for k, v in TINY.items()]
    proc = subprocess.run([sys.executable, "-m", "zoomfeat.extract", str(slides_dir), f"out_dir={out}", *args],
                          env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and ": warning:" not in ln]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(
        f"zoomfeat extract: error: {out}: not enough free space for full0's bags"
    ), lines
    assert "free some space or choose another out_dir, then rerun the same command" in lines[0]
    assert not _bags(out) and not _temporaries(out)
    filler.unlink()

    # during: the first slide finishes; the second one's first batch is followed by a filler that
    # takes every free byte (another process filling the disk). The second slide's blocks were
    # reserved before any row was computed (features/writer.py, _reserve), so it still finishes
    # and HDF5 never meets a failed write; the third slide stops the run with the one line.
    state = {"slides": 0}

    def on_slide_start(plan) -> None:
        state["slides"] += 1

    def on_batch(done: int, total: int) -> None:
        if state["slides"] == 2 and not (small_disk / "filler.bin").exists():
            _fill(small_disk, leave=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DiskFullError) as err:
            extract_slides(slides, out, cfg, echo=lambda _: None,
                           hooks=SlideHooks(on_slide_start=on_slide_start, on_batch=on_batch))  # fmt: skip
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{out}: not enough free space for full2's bags"), msg
    assert "free some space or choose another out_dir, then rerun the same command" in msg
    assert not _temporaries(out)
    got = _bags(out)  # the finished slides' bags intact, nothing of the third one published
    assert {k.split(":")[0].rsplit("/", 1)[1] for k in got} == {"full0.h5", "full1.h5"}
    assert all(np.array_equal(want[k], got[k]) for k in got)

    # space freed: the plain rerun completes, every bag equal to the uninterrupted run's
    (small_disk / "filler.bin").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert extract_slides(slides, out, cfg, echo=lambda _: None).ok
    got = _bags(out)
    assert got.keys() == want.keys() and all(np.array_equal(want[k], got[k]) for k in want)
