"""benchmarks/trident_compare.py, our half only (TRIDENT is not installable here): without TRIDENT it
says so in one line and exits 0; its feature comparison matches rows by coords, whatever their order."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "trident_compare.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )


def test_without_trident_one_line_and_exit_0(tmp_path):
    proc = _run("--work", str(tmp_path / "w"))
    assert proc.returncode == 0 and proc.stderr == ""
    assert (
        proc.stdout.count("\n") == 1
        and "--trident-python" in proc.stdout
        and "nothing measured" in proc.stdout
    )
    assert not (tmp_path / "w").exists()  # nothing built before TRIDENT is known to be there

    proc = _run("--trident-python", sys.executable, "--trident-src", str(tmp_path))
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.strip() == (
        f"trident_compare: --trident-src {tmp_path}: no run_batch_of_slides.py there; nothing measured"
    )


def _bag(path: Path, coords: np.ndarray, features: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["coords"] = coords
        f["features"] = features
    return path


def test_compare_features_matches_rows_by_coords(tmp_path):
    spec = importlib.util.spec_from_file_location("trident_compare", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["trident_compare"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)

    rng = np.random.default_rng(0)
    coords = np.array([[0, 0], [256, 0], [0, 256], [512, 512]], dtype=np.int64)
    feats = rng.standard_normal((4, 8)).astype(np.float32)
    other = feats.copy()
    other[2, 5] += 0.25
    order = np.array([3, 1, 0, 2])  # TRIDENT's rows in another order
    zf = _bag(tmp_path / "zf.h5", coords, feats)
    td = _bag(tmp_path / "td.h5", coords[order], other[order])
    got = mod.compare_features(zf, td)
    assert got["same_coords"] and got["only_zoomfeat"] == got["only_trident"] == 0
    assert abs(got["max_abs_diff"] - 0.25) < 1e-6  # float32 rounding of feats[2, 5] + 0.25 (|x| < 4)

    td2 = _bag(tmp_path / "td2.h5", coords[:3], other[:3])  # one tile fewer
    got = mod.compare_features(zf, td2)
    assert not got["same_coords"] and got["only_zoomfeat"] == 1 and got["only_trident"] == 0
