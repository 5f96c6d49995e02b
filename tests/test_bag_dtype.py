"""bags.dtype: features stored as float16 or float32; float16 overflow is one line naming the slide."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest

from zoomfeat.bags import FLOAT16_MAX, FeatureRangeError, PerMag, list_bags, open_bag, write_bag
from zoomfeat.features.writer import SlideBagWriter, slide_outputs
from zoomfeat.runtime.errors import ConfigError

ATTRS = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40.0, "target_magnification": 20,
         "overlap": 0, "name": "s", "level0_width": 4096, "level0_height": 4096}  # fmt: skip


def test_write_bag_stores_float16_and_reads_back_float32(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 7)) * 100).astype(np.float32)
    path = write_bag(tmp_path / "a.h5", x, np.zeros((5, 2)), ATTRS, dtype="float16")
    with h5py.File(path) as f:
        assert f["features"].dtype == np.float16
    bag = open_bag(path)
    assert bag.features.dtype == np.float32
    # float16 keeps 11 significant bits: the stored value is x rounded to nearest, |err| <= 2^-11 |x|
    np.testing.assert_array_equal(bag.features, x.astype(np.float16).astype(np.float32))
    assert np.all(np.abs(bag.features - x) <= np.abs(x) * 2.0**-11)


def test_float16_overflow_is_refused_and_writes_nothing(tmp_path):
    x = np.array([[1.0, FLOAT16_MAX], [-70000.0, 2.0]], np.float32)
    with pytest.raises(
        FeatureRangeError, match=r"a\.h5: 1 feature value\(s\) beyond float16's range.*bags\.dtype=float32"
    ):
        write_bag(tmp_path / "a.h5", x, np.zeros((2, 2)), ATTRS, dtype="float16")
    assert not list(tmp_path.iterdir())
    # float32 holds it
    assert open_bag(write_bag(tmp_path / "a.h5", x, np.zeros((2, 2)), ATTRS)).features[1, 0] == -70000.0


def test_slide_writer_float16_overflow_names_the_slide_and_publishes_nothing(tmp_path):
    dims = {"uni_20x": 3, "uni_5x": 3, "uni_fused": 6}
    w = SlideBagWriter(tmp_path, "slide_7", dims=dims, coords=PerMag(x20=np.zeros((2, 2)), x5=np.zeros((1, 2))),
                       coords_attrs=PerMag(x20=ATTRS, x5=ATTRS), parent_idx=np.array([0, 0]), attrs={},
                       dtype="float16")  # fmt: skip
    w.write("uni_5x", 0, np.ones((1, 3)))
    with pytest.raises(
        FeatureRangeError, match=r"slide 'slide_7', feature set uni_20x, rows 0\.\.2: 1 feature value"
    ):
        w.write("uni_20x", 0, np.array([[0.0, 1.0, 2.0], [3.0, 1e5, 4.0]]))
    w.abort()
    assert not any(p.exists() for p in slide_outputs(tmp_path, "slide_7", sets=dims).values())
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_bags_dtype_is_checked_at_load_time():
    from zoomfeat.features.config import ExtractConfig

    with pytest.raises(ConfigError, match="bags.dtype must be one of float16 | float32, got 'bfloat16'"):
        ExtractConfig.from_kwargs(model="tiny", encoder="tiny", **{"bags.dtype": "bfloat16"})


def test_extraction_float16_bags_are_the_float32_bags_rounded(synthetic_slide_factory, tmp_path):
    """Same slide, same batch size: the float32 features are bitwise equal across the two runs, so
    the float16 bags are exactly their rounding, and about half the bytes."""
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.runner import extract_slides
    from zoomfeat.slide.manifest import discover

    slide = synthetic_slide_factory(
        "dtype_a", width=1024, height=1024, mpp=0.5, levels=2, seed=3, tissue_fraction=0.5
    )
    base = {"model": "tiny", "encoder": "tiny", "zoomldm": False, "progress": False, "num_workers": 0}
    outs = {}
    for dtype in ("float32", "float16"):
        outs[dtype] = tmp_path / dtype
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = extract_slides(
                discover([slide]), outs[dtype], ExtractConfig.from_kwargs(**base, **{"bags.dtype": dtype})
            )
        assert summary.ok, summary.report()
    for name, mag in (("uni_20x", 20), ("uni_5x", 5), ("uni_fused", 20)):
        d32 = outs["float32"] / f"{mag}x_256px_0px_overlap" / f"features_{name}"
        d16 = outs["float16"] / f"{mag}x_256px_0px_overlap" / f"features_{name}"
        (p32,) = list_bags(d32).values()
        (p16,) = list_bags(d16).values()
        with h5py.File(p16) as f16, h5py.File(p32) as f32:
            assert f16["features"].dtype == np.float16
            # the features' bytes halve (small files like these are mostly HDF5 metadata and coords)
            assert f16["features"].id.get_storage_size() * 2 == f32["features"].id.get_storage_size()
        b32, b16 = open_bag(p32), open_bag(p16)
        assert len(b32) > 0
        np.testing.assert_array_equal(b16.features, b32.features.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(b16.coords, b32.coords)
