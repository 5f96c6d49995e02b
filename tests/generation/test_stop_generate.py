"""``python -m zoomfeat.generate`` stopped by Ctrl-C (SIGINT to the process group) while it samples.

The samplers get a step hook (zoomfeat.runtime.stopping.step_check) that ends the request at the
end of the step in hand: exactly one line on stderr naming the step and how to resume, exit status
130, no temporary file, no generated image written (the reference patch written before sampling
stays), no process left; the plain rerun's images equal an uninterrupted run's bit for bit (the
same seed; one torch thread in every run).

The tiny model's patches (one patch, 10 PLMS steps): the signal is sent when the reference patch
appears, right before sampling, so it lands inside the ~1-2 s of sampling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.processes import descendants, interrupt, kill_tree, left_alive
from zoomfeat.cli import hydra_main
from zoomfeat.generate import run

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _args(slide: Path, golden_dir: Path, out: Path) -> list[str]:
    return [
        str(slide), "mode=patch", "model=tiny", f"model.checkpoint={golden_dir / 'zoomldm_tiny.ckpt'}",
        "encoder=tiny", "device=cpu", "progress=false", "region.x0=700", "region.y0=1000", "patch.count=1",
        "patch.steps=10", "name=stop", f"out_dir={out}",
    ]  # fmt: skip


def _images(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("stop_*.png"))}


def test_generate_stops_on_ctrl_c_and_a_rerun_equals_an_uninterrupted_run(cmu_slide, golden_dir, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    hydra_main("generate", run, argv=_args(cmu_slide, golden_dir, ref))  # the uninterrupted run
    want = _images(ref)
    assert set(want) == {"stop_reference_5x.png", "stop_0.png"}

    cmd = [sys.executable, "-m", "zoomfeat.generate", *_args(cmu_slide, golden_dir, out)]
    proc = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    children: list[int] = []
    try:
        reference = out / "stop_reference_5x.png"  # written right before sampling starts
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not reference.exists():
            children = descendants(proc.pid) or children
            time.sleep(0.01)
        assert proc.poll() is None and reference.exists(), proc.communicate()[1][-3000:]
        err = interrupt(proc, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    finally:
        kill_tree(proc)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    lines = err.splitlines()  # exactly the one line: no trace, no warning
    assert len(lines) == 1 and lines[0].startswith("zoomfeat generate: stopped by SIGINT: mode=patch: "), err
    assert "abandoned after plms step" in lines[0] and "rerun the same command" in lines[0], lines[0]
    written = sorted(p.name for p in out.iterdir() if p.name != ".hydra")  # Hydra's run record aside
    assert written == ["stop_reference_5x.png"]  # no temporary, no generated image, no summary
    assert not left_alive(children)

    hydra_main("generate", run, argv=_args(cmu_slide, golden_dir, out))  # the plain rerun
    got = _images(out)
    assert got.keys() == want.keys() and all(np.array_equal(want[k], got[k]) for k in want)
