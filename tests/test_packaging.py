"""The package as users install it: a wheel (not an editable install) that runs from anywhere.

The wheel is built from a clean copy of the sources (no stale ``build/``), installed without
``-e`` into a fresh virtual environment, and three entry points run from a directory outside the
repository: the demo extraction, the MUSK1 benchmark and a generation dry run. Installing torch
and the other dependencies into the fresh environment would take minutes, so it sees the test
environment's site-packages through a ``.pth`` file: a plain path line is added to ``sys.path``,
but ``.pth`` files inside that directory are not processed, so the editable install's finder is
not loaded, and ``zoomfeat`` is imported from the fresh environment (checked).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _build_wheel(dest: Path, tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "zoomfeat", src / "zoomfeat", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dest),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dest.glob("zoomfeat-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    return _build_wheel(tmp / "dist", tmp)


def test_wheel_contains_configs_and_all_subpackages(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in sorted((REPO / "zoomfeat" / "conf").rglob("*.yaml")):
        assert f"zoomfeat/conf/{yaml.relative_to(REPO / 'zoomfeat' / 'conf').as_posix()}" in names, yaml
    for init in sorted((REPO / "zoomfeat").rglob("*.py")):
        assert f"zoomfeat/{init.relative_to(REPO / 'zoomfeat').as_posix()}" in names, init
    assert "zoomfeat/data/CMU-1-Small-Region.svs" in names
    assert {"zoomfeat/data/mil/musk1.csv", "zoomfeat/tasks/__main__.py"} <= names


def test_config_dir_from_source_checkout():
    from zoomfeat.runtime.resources import config_dir

    assert config_dir() == REPO / "zoomfeat" / "conf"


@pytest.mark.slow
def test_installed_wheel_runs_from_outside_the_repo(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    (site / "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"  # outside the repository; nothing of the source tree is on the path
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ZOOMFEAT_DEBUG")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1")

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(python), *args], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def finish(proc: subprocess.Popen) -> str:
        try:
            stdout, stderr = proc.communicate(timeout=900)
        finally:
            proc.kill()  # a no-op once it has exited
        assert proc.returncode == 0, (
            f"{proc.args}\n--- stderr:\n{stderr[-3000:]}\n--- stdout:\n{stdout[-2000:]}"
        )
        assert "Traceback" not in stderr, stderr[-3000:]
        return stdout

    where = finish(start("-c", "import zoomfeat; print(zoomfeat.__file__)")).strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the editable source tree

    # the three entry points at once, one thread each (independent: own output directories); the
    # demo keeps its tiles with at least 75% tissue (25 + 5 tiles instead of 47 + 6, as in
    # tests/test_extract.py): what is checked here is that it runs from the wheel, not how many tiles
    demo = start("-m", "zoomfeat.extract", "demo=true", "progress=false", "tissue.min_tissue=0.75")
    # the MUSK1 set ships in the wheel; 3 epochs instead of the task's 100 keep this test short
    bench = ("task=musk1", "cv.folds=3", "mil.epochs=3", "mil.min_epochs=1", "mil.warmup=0", "threads=1")
    musk = start("-m", "zoomfeat.bench", *bench, "progress=false", "out_dir=musk1")
    dry = start("-m", "zoomfeat.generate", "mode=large", "region.mag=1.25x", "dry_run=true")

    out = finish(demo)
    assert "1 extracted" in out, out
    bags = sorted(
        p.relative_to(work / "zoomfeat_demo").as_posix() for p in (work / "zoomfeat_demo").rglob("*.h5")
    )
    assert any("features_zoomldm_fused/CMU-1-Small-Region.h5" in b for b in bags), bags
    assert any("features_uni_fused/CMU-1-Small-Region.h5" in b for b in bags), bags

    finish(musk)
    import pandas as pd

    folds = pd.read_csv(work / "musk1" / "folds.csv")
    assert len(folds) == 3 and folds["auc"].between(0, 1).all(), folds

    out = finish(dry)
    assert "4096x4096 px" in out and "UNet evals 215,080" in out, out
