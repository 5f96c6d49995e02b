"""Real files of every kind, made from the CMU slide: a DICOM series (wsidicomizer), an OME-TIFF
pyramid (tifffile, SubIFDs), a PNG; and real servers on 127.0.0.1 (tests/slide/servers.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # servers.py, slide_files.py

from slide_files import write_dicom, write_ome_pyramid  # noqa: E402


@pytest.fixture(scope="session")
def cmu_pixels(cmu_slide) -> np.ndarray:
    """The whole CMU slide at level 0, decoded by openslide (RGB uint8, 2967 x 2220)."""
    from zoomfeat.slide import Slide

    with Slide.open(cmu_slide) as s:
        w, h = s.dimensions
        return s.read_box(0, 0, w, h, out_w=w, out_h=h)


@pytest.fixture(scope="session")
def cmu_dicom(cmu_slide, tmp_path_factory) -> Path:
    return write_dicom(cmu_slide, tmp_path_factory.mktemp("dicom") / "CMU-1-dicom")


@pytest.fixture(scope="session")
def cmu_ome(cmu_pixels, tmp_path_factory) -> Path:
    return write_ome_pyramid(cmu_pixels, tmp_path_factory.mktemp("ome") / "CMU-1.ome.tiff")


@pytest.fixture(scope="session")
def cmu_png(cmu_pixels, tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("png") / "CMU-1.png"
    Image.fromarray(cmu_pixels).save(path)
    return path


@pytest.fixture
def slide_copy(cmu_slide, tmp_path) -> Path:
    """A private copy of the CMU slide (tests that change it)."""
    return Path(shutil.copy(cmu_slide, tmp_path / "copy.svs"))
