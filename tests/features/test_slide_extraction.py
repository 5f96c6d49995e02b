"""zoomfeat.features.slide_extraction: determinism across batching, the existing-bags/lock step, empty slides."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from zoomfeat.bags import FEATURE_SETS, bag_path, open_bag, patches_path
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.locks import SlideLock
from zoomfeat.features.pipeline import Extractor, extract_slide


def _bags(out, slide_id):
    return {name: open_bag(bag_path(out, name, slide_id)) for name in FEATURE_SETS}


def test_batch_size_and_workers_do_not_change_features(
    tiny, reference_run, small_slides, tmp_path, batch_atol
):
    ex = Extractor(ExtractConfig.from_kwargs(**tiny, batch_size=16, num_workers=2))
    for slide in sorted(small_slides.iterdir()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = ex.extract(slide, tmp_path)
        assert result.status == "done"
        ref, new = _bags(reference_run, slide.stem), _bags(tmp_path, slide.stem)
        for name in FEATURE_SETS:
            a, b = ref[name], new[name]
            assert a.features.shape == b.features.shape and len(a) > 0
            np.testing.assert_array_equal(a.coords, b.coords)
            if name.startswith("uni"):
                np.testing.assert_array_equal(a.features, b.features, err_msg=name)
            else:
                np.testing.assert_allclose(a.features, b.features, rtol=0, atol=batch_atol, err_msg=name)
                assert np.abs(a.features).max() > 0.1  # real features, not zeros
        np.testing.assert_array_equal(ref["zoomldm_20x"].parent_idx, new["zoomldm_20x"].parent_idx)


def test_a_held_lock_leaves_the_slide_to_its_owner(tiny, small_slides, tmp_path):
    ex = Extractor(ExtractConfig.from_kwargs(**tiny))
    lock = SlideLock(tmp_path, "det_b")
    assert lock.acquire()
    try:
        assert not SlideLock(tmp_path, "det_b").acquire()  # a second holder is refused
        result = ex.extract(small_slides / "det_b.svs", tmp_path)
        assert result.status == "locked"
        assert not bag_path(tmp_path, "zoomldm_20x", "det_b").exists()
        with pytest.raises(BlockingIOError, match="another process"):
            extract_slide(small_slides / "det_b.svs", tmp_path, **tiny)
    finally:
        lock.release()
    assert not lock.path.exists()
    assert SlideLock(tmp_path, "det_b").acquire()


def test_slide_without_tissue_gives_empty_bags(tiny, synthetic_slide_factory, tmp_path):
    blank = synthetic_slide_factory("blank", width=1024, height=1024, mpp=0.5, levels=2, tissue_fraction=0.0)
    with pytest.warns(UserWarning, match="no tissue"):
        paths = extract_slide(blank, tmp_path, **tiny)
    dims = {
        "zoomldm_20x": 96,
        "zoomldm_5x": 96,
        "zoomldm_fused": 192,
        "uni_20x": 32,
        "uni_5x": 32,
        "uni_fused": 64,
    }
    for name, d in dims.items():
        bag = open_bag(paths[name])
        assert bag.features.shape == (0, d) and bag.coords.shape == (0, 2), name
        assert bag.attrs["complete"] is True or bag.attrs["complete"] == 1
    assert open_bag(paths["zoomldm_20x"]).parent_idx.shape == (0,)
    for mag in (20, 5):
        assert patches_path(tmp_path, "blank", mag).is_file()
