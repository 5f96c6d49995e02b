"""Shared fixtures: the golden ZoomLDM files, the real CMU slide, synthetic slides."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

# Keep the suite predictable on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


#: free space the suite needs where its temporary directories go: the largest test writes a
#: full-size UNI checkpoint (1.2 GB); a passing test's directory is removed when it ends
#: (pyproject: tmp_path_retention_policy), the session's shared slides and wheel stay (~0.1 GB).
#: Measured: `du` of --basetemp every 3 s through a whole run peaked at 1,158 MB.
NEEDS_FREE_GB = 1.5


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to start on a disk too full for the suite: one line saying where, how much is free
    and what to do (a full disk fails hundreds of tests one by one, each with its own trace)."""
    import shutil
    import tempfile

    base = Path(session.config.option.basetemp or tempfile.gettempdir()).absolute()
    while not base.exists():
        base = base.parent
    free_gb = shutil.disk_usage(base).free / 1e9
    if free_gb < NEEDS_FREE_GB:
        pytest.exit(
            f"{base}: {free_gb:.1f} GB free, the test suite needs about {NEEDS_FREE_GB:.1f} GB there "
            "for its temporary files; free some space, or point TMPDIR (or --basetemp) at a disk "
            "that has it",
            returncode=3,
        )


def _torch_threads() -> int | None:
    """torch's intra-op thread count, or None while torch is not imported (not imported here)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _restore_torch_threads(before: int | None) -> None:
    """Set torch's thread count back to ``before`` (when torch was not imported yet: the count a
    fresh import gives, ``OMP_NUM_THREADS``). Float32 reductions are split over threads, so a count
    left behind by one test changes the rounding of later in-process runs (bitwise comparisons)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    want = before if before is not None else int(os.environ.get("OMP_NUM_THREADS", "2"))
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)


@pytest.fixture(autouse=True, scope="module")
def _module_keeps_torch_threads():
    """What a module's fixtures set (``torch.set_num_threads`` in a module fixture) ends with it."""
    before = _torch_threads()
    yield
    _restore_torch_threads(before)


@pytest.fixture(autouse=True)
def _test_keeps_torch_threads():
    """What a test sets (``torch.set_num_threads`` in its body) ends with it."""
    before = _torch_threads()
    yield
    _restore_torch_threads(before)


@pytest.fixture
def one_thread():
    """One torch CPU thread for the test, the previous count restored after it (not autouse: a
    module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``). Float32
    reductions are split over threads, so results compared bitwise (resume, DDP) need one count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The official-format tiny checkpoint and outputs, carried by the repository (tests/data/golden)."""
    found = TESTS / "data" / "golden" / "zoomldm_tiny.ckpt"
    if not found.is_file():
        pytest.fail("golden files missing: expected tests/data/golden/zoomldm_tiny.ckpt")
    return found.parent


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    """The real H&E slide CMU-1-Small-Region.svs (0.499 um/px, one level), shipped in the package."""
    from zoomfeat.runtime.resources import demo_slide

    path = demo_slide()
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def synthetic_slide_factory(tmp_path_factory):
    """``make(name, **kwargs) -> Path``: a cached synthetic pyramidal slide (see zoomfeat.slide.synthetic)."""
    from zoomfeat.slide.synthetic import write_synthetic_slide

    root = tmp_path_factory.mktemp("synthetic_slides")
    cache: dict[str, Path] = {}

    def make(name: str, **kwargs) -> Path:
        if name not in cache:
            vendor = kwargs.get("vendor", "aperio")
            suffix = ".svs" if vendor == "aperio" else ".tif"
            cache[name] = write_synthetic_slide(root / f"{name}{suffix}", **kwargs)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def stop_slides(synthetic_slide_factory, tmp_path_factory) -> Path:
    """A directory of three 1024 x 1024 px synthetic slides ``stop0.svs ... stop2.svs`` (the
    stopped-run tests of tests/test_signals.py and tests/test_disk_full.py)."""
    from tests.processes import slides_dir

    return slides_dir(synthetic_slide_factory, tmp_path_factory.mktemp("stop_slides"), prefix="stop", seed=10)


@pytest.fixture(scope="session")
def stop_reference(stop_slides, tmp_path_factory) -> dict:
    """The bags of one uninterrupted in-process extraction of ``stop_slides`` with
    ``tests.processes.STOP_RUN``, one torch thread (what the stopped runs' processes have:
    OMP_NUM_THREADS=1), by relative path (``tests.processes.read_bags``); computed once for the
    files that compare a stopped and rerun extraction with it bit for bit."""
    import warnings

    import torch

    from tests.processes import STOP_RUN, read_bags
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.runner import extract_slides
    from zoomfeat.slide.manifest import discover

    out = tmp_path_factory.mktemp("stop_reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = extract_slides(
                discover([stop_slides]), out, ExtractConfig.from_kwargs(**STOP_RUN), echo=lambda _: None
            )
    finally:
        torch.set_num_threads(threads)
    assert summary.ok and [r.status for r in summary.results] == ["done"] * 3, summary.report()
    return read_bags(out)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size_mb)``: a directory with a tmpfs of that size mounted on it (a small disk that
    really fills up), unmounted after the test; the test is skipped where mounting is refused
    (it needs root)."""
    import subprocess

    mounted: list[Path] = []

    def mount(size_mb: int) -> Path:
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(d)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)
