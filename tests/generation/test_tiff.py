"""Pyramidal tiled TIFF: openslide (and zoomfeat's Slide) reopen it with its levels and MPP."""

from __future__ import annotations

import numpy as np
import pytest

from zoomfeat.generation.tiff import pyramid, write_pyramidal_tiff
from zoomfeat.runtime.errors import InputError


def test_openslide_reopens_levels_pixels_and_mpp(tmp_path):
    import openslide

    from zoomfeat.slide import Slide

    img = np.random.default_rng(0).integers(0, 256, (600, 520, 3), dtype=np.uint8)
    path = write_pyramidal_tiff(tmp_path / "x.tif", img, mpp=0.5)
    osr = openslide.OpenSlide(str(path))
    assert osr.level_dimensions == ((520, 600), (260, 300), (130, 150))
    assert np.array_equal(np.asarray(osr.read_region((0, 0), 0, (520, 600)))[..., :3], img)  # lossless
    slide = Slide.open(path)
    assert abs(slide.mpp - 0.5) < 1e-6 and slide.dimensions == (520, 600)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically


def test_pyramid_and_errors(tmp_path):
    levels = pyramid(np.full((1024, 1024, 3), 7, np.uint8))
    assert [lv.shape[0] for lv in levels] == [1024, 512, 256] and int(levels[-1].max()) == 7
    with pytest.raises(InputError):
        write_pyramidal_tiff(tmp_path / "y.tif", np.zeros((10, 10), np.uint8))
