"""Fixtures for the extraction tests: small synthetic slides and one reference extraction."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest

#: the tiny model/encoder, a tissue threshold that keeps the slides small, no progress bars
#: (ExtractConfig.from_kwargs / extract_slide keywords, the command line's names)
TINY = {"model": "tiny", "encoder": "tiny", "tissue.min_tissue": 0.5, "progress": False}


@pytest.fixture
def batch_atol() -> float:
    """Tolerance between ZoomLDM features computed in different batch sizes.

    Across *batch sizes* the ZoomLDM features agree to float32 rounding, not bitwise: oneDNN picks
    convolution blocking by batch size (even single-threaded), so the VQ encoder's and UNet's sums
    are reassociated differently. Measured: at most 7e-7 absolute on features of magnitude ~1.3
    (a few ulps carried through ~40 layers). UNI (matmul/attention only) is bitwise equal, and so
    is everything across worker counts and shards at the same batch size (test_runner.py).
    """
    return 1e-5


@pytest.fixture
def tiny() -> dict:
    """Extraction settings for the tiny model and encoder (see TINY)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def small_slides(synthetic_slide_factory, tmp_path_factory):
    """A directory with two small Aperio-style slides at 0.5 um/px (20x).

    ``det_a``: 2048x1024 px, 2 parents with 2 + 4 kept 20x tiles; ``det_b``: 1024x1024 px,
    1 parent with 3 kept 20x tiles (at min_tissue 0.5).
    """
    a = synthetic_slide_factory(
        "det_a", width=2048, height=1024, mpp=0.5, levels=2, seed=0, tissue_fraction=0.3
    )
    b = synthetic_slide_factory(
        "det_b", width=1024, height=1024, mpp=0.5, levels=2, seed=1, tissue_fraction=0.3
    )
    d = tmp_path_factory.mktemp("small_slides")
    for p in (a, b):
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="session")
def reference_run(small_slides, tmp_path_factory):
    """Both small slides extracted in-process with batch_size=3, num_workers=0: the reference output dir."""
    import torch

    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.runner import extract_slides
    from zoomfeat.slide.manifest import discover

    out = tmp_path_factory.mktemp("reference_run")
    # the command-line runs compared with it bitwise inherit OMP_NUM_THREADS (tests/conftest.py):
    # the same torch thread count here, whatever count the process is at
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = extract_slides(
                discover([small_slides]), out, ExtractConfig.from_kwargs(**TINY, batch_size=3, num_workers=0)
            )
    finally:
        torch.set_num_threads(threads)
    assert summary.ok and [r.status for r in summary.results] == ["done", "done"], summary.report()
    return out
