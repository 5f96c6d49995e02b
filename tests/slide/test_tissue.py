"""zoomfeat.slide.tissue: the tissue mask on the real slide and on artefacts (grey glass, black borders)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoomfeat.slide import Slide, detect_tissue
from zoomfeat.slide.synthetic import synthetic_artefact_image, write_synthetic_slide
from zoomfeat.slide.tissue import TissueMask, otsu_threshold, tissue_mask


def _area_mean(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average a full-resolution map onto a (h, w) grid spanning it exactly."""
    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.BOX))


@pytest.fixture(scope="module")
def cmu_tissue(cmu_slide):
    slide = Slide.open(cmu_slide)
    return slide, detect_tissue(slide, mpp=8.0)


def test_cmu_mask_keeps_tissue_and_drops_background(cmu_tissue):
    slide, tm = cmu_tissue
    assert tm.mask.dtype == bool and tm.mask.shape == tm.thumbnail.shape[:2]
    assert tm.downsample_x == pytest.approx(slide.dimensions[0] / tm.mask.shape[1])
    assert 0.2 < tm.tissue_fraction < 0.5  # about a third of this field is tissue
    # truth from the full-resolution pixels: stained (saturated) vs plain white glass
    full = slide.read_region(0, 0, max(slide.dimensions), slide.mpp)[
        : slide.dimensions[1], : slide.dimensions[0]
    ]
    f = full.astype(np.float32)
    sat = (f.max(2) - f.min(2)) / np.maximum(f.max(2), 1)
    stained = _area_mean(sat > 0.2, tm.mask.shape)
    white = _area_mean((f.min(2) > 215) & (sat < 0.06), tm.mask.shape)
    tissue_px, background_px = stained > 0.5, white > 0.99
    assert tissue_px.sum() > 2000 and background_px.sum() > 8000
    assert tm.mask[tissue_px].mean() > 0.97, tm.mask[tissue_px].mean()
    assert (~tm.mask[background_px]).mean() > 0.97, (~tm.mask[background_px]).mean()
    # overlay: same size, tissue tinted, background untouched
    over = tm.overlay()
    assert over.shape == tm.thumbnail.shape
    np.testing.assert_array_equal(over[background_px & ~tm.mask], tm.thumbnail[background_px & ~tm.mask])


def test_grey_glass_and_black_borders_are_not_tissue(tmp_path):
    img, truth = synthetic_artefact_image(2048, 2048, seed=3)
    path = write_synthetic_slide(tmp_path / "artefacts.svs", image=img, mpp=0.5, levels=3)
    tm = detect_tissue(Slide.open(path), mpp=8.0)
    shape = tm.mask.shape
    black, grey, tissue = (_area_mean(truth[k], shape) for k in ("black", "grey", "tissue"))
    assert tm.mask[black > 0.5].mean() < 0.01
    assert tm.mask[grey > 0.5].mean() < 0.01
    assert tm.mask[tissue > 0.6].mean() > 0.95
    assert tm.mask[(tissue == 0) & (black == 0) & (grey == 0)].mean() < 0.01  # white glass
    assert tm.overlay().shape == (*shape, 3)


def test_all_white_has_no_tissue():
    rng = np.random.default_rng(0)
    white = np.clip(245 + rng.normal(0, 2, size=(300, 300, 3)), 0, 255).astype(np.uint8)
    mask, threshold = tissue_mask(white, mpp=8.0)
    assert not mask.any() and threshold >= 0.07


def test_all_tissue_keeps_pale_stroma():
    # a field of tissue only: pale pink stroma and purple nuclei; Otsu alone would split them
    img = np.empty((200, 200, 3), np.uint8)
    img[:] = (235, 190, 215)  # pale stroma, saturation 0.19
    img[::7, ::7] = (90, 50, 140)
    mask, _ = tissue_mask(img, mpp=8.0)
    assert mask.mean() > 0.95


def test_otsu_threshold_separates_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.normal(0.5, 0.05, 3000)]).clip(0, 1)
    t = otsu_threshold(values)
    assert 0.18 < t < 0.42
    assert otsu_threshold(np.zeros(100)) == 1.0 and otsu_threshold(np.array([])) == 1.0  # nothing to split


def test_fraction_of_fractional_boxes_is_exact():
    rng = np.random.default_rng(1)
    mask = rng.random((12, 15)) > 0.5
    tm = TissueMask(
        mask=mask,
        thumbnail=np.zeros((12, 15, 3), np.uint8),
        mpp=8.0,
        downsample_x=4.0,
        downsample_y=5.0,
        threshold=0.1,
    )
    fine = np.kron(mask, np.ones((5, 4), bool)).astype(np.float64)  # mask at level-0 resolution
    for x0, y0, w, h in [
        (0, 0, 60, 60),
        (3.5, 7.25, 13.0, 9.5),
        (40.2, 21.9, 7.7, 17.3),
        (50, 50, 30, 30),
        (-10, -10, 20, 20),
    ]:
        # brute force on a 100x finer lattice
        xs = x0 + (np.arange(int(w * 20)) + 0.5) / 20
        ys = y0 + (np.arange(int(h * 20)) + 0.5) / 20
        inside = (xs >= 0) & (xs < 60)
        inside_y = (ys >= 0) & (ys < 60)
        sub = np.zeros((len(ys), len(xs)))
        sub[np.ix_(inside_y, inside)] = fine[np.floor(ys[inside_y]).astype(int)][
            :, np.floor(xs[inside]).astype(int)
        ]
        assert tm.fraction(x0, y0, w, h) == pytest.approx(sub.mean(), abs=0.01), (x0, y0, w, h)
    # vectorised over arrays
    got = tm.fraction(np.array([0.0, 8.0]), np.array([0.0, 10.0]), 4.0, 5.0)
    np.testing.assert_allclose(got, [mask[0, 0], mask[2, 2]])
