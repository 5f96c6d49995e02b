import h5py
import numpy as np
import pandas as pd
import pytest

from zoomfeat.bags import (
    BagDataset,
    bag_is_complete,
    bag_path,
    list_bags,
    open_bag,
    patches_path,
    write_bag,
    write_patches,
)

COORDS_ATTRS = dict(
    patch_size=256,
    patch_size_level0=513,
    level0_magnification=20.04,
    target_magnification=20,
    overlap=0,
    name="slideA",
    level0_width=2220,
    level0_height=2967,
)


def _bag(tmp_path, slide_id="slideA", n=5, d=7, **kw):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    coords = np.stack([np.arange(n) * 513, np.zeros(n)], 1).astype(np.int64)
    path = write_bag(
        bag_path(tmp_path, "zoomldm_20x", slide_id),
        feats,
        coords,
        COORDS_ATTRS,
        attrs={"config_hash": "abc", "timestep": 200, "taps": ["middle_block"]},
        **kw,
    )
    return path, feats, coords


def test_layout_paths(tmp_path):
    assert (
        bag_path(tmp_path, "uni_5x", "s1") == tmp_path / "5x_256px_0px_overlap" / "features_uni_5x" / "s1.h5"
    )
    assert (
        bag_path(tmp_path, "zoomldm_fused", "s1")
        == tmp_path / "20x_256px_0px_overlap" / "features_zoomldm_fused" / "s1.h5"
    )
    assert (
        patches_path(tmp_path, "s1", 20) == tmp_path / "20x_256px_0px_overlap" / "patches" / "s1_patches.h5"
    )
    with pytest.raises(ValueError, match="unknown feature set"):
        bag_path(tmp_path, "nope", "s1")


def test_write_and_open_roundtrip(tmp_path):
    path, feats, coords = _bag(tmp_path, parent_idx=np.array([0, 0, 1, 1, 2]))
    bag = open_bag(path)
    np.testing.assert_array_equal(bag.features, feats)
    np.testing.assert_array_equal(bag.coords, coords)
    assert bag.attrs["timestep"] == 200 and bag.attrs["config_hash"] == "abc"
    assert bag.coords_attrs["patch_size_level0"] == 513
    np.testing.assert_array_equal(bag.parent_idx, [0, 0, 1, 1, 2])
    features, c, attrs = open_bag(path)  # tuple-style unpacking
    assert features.shape == (5, 7) and c.dtype == np.int64
    with h5py.File(path) as f:  # the raw TRIDENT layout
        assert f["features"].dtype == np.float32 and f["features"].chunks is not None
        assert f["coords"].attrs["name"] == "slideA"
    assert not list(path.parent.glob(".*tmp*")), "temporary file left behind"


def test_empty_bag(tmp_path):
    path = write_bag(tmp_path / "e.h5", np.zeros((0, 4), np.float32), np.zeros((0, 2)), COORDS_ATTRS)
    assert open_bag(path).features.shape == (0, 4)


def test_completeness_and_config_hash(tmp_path):
    path, _, _ = _bag(tmp_path)
    assert bag_is_complete(path) and bag_is_complete(path, "abc")
    assert not bag_is_complete(path, "other")
    assert not bag_is_complete(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "partial.h5", "w") as f:  # a file some other writer never finished
        f.create_dataset("features", data=np.zeros((1, 2)))
    assert not bag_is_complete(tmp_path / "partial.h5")


def test_failed_write_keeps_finished_file(tmp_path):
    path, feats, _ = _bag(tmp_path)
    with pytest.raises(ValueError, match="feature rows"):
        write_bag(path, np.zeros((3, 7)), np.zeros((2, 2)), COORDS_ATTRS)
    np.testing.assert_array_equal(open_bag(path).features, feats)


def test_missing_coords_attrs(tmp_path):
    with pytest.raises(ValueError, match="coords attributes missing"):
        write_bag(tmp_path / "x.h5", np.zeros((1, 2)), np.zeros((1, 2)), {"patch_size": 256})


def test_open_bag_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no bag file"):
        open_bag(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="junk.h5"):
        open_bag(tmp_path / "junk.h5")


def test_patches_file(tmp_path):
    path = write_patches(patches_path(tmp_path, "s", 20), np.array([[0, 0], [513, 0]]), COORDS_ATTRS)
    with h5py.File(path) as f:
        assert f["coords"].shape == (2, 2) and f["coords"].attrs["patch_size"] == 256


def test_bag_dataset(tmp_path):
    for i in range(3):
        _bag(tmp_path, f"s{i}", n=i + 1)
    bag_dir = bag_path(tmp_path, "zoomldm_20x", "s0").parent
    assert list(list_bags(bag_dir)) == ["s0", "s1", "s2"]
    labels = pd.DataFrame({"slide_id": ["s0", "s2"], "label": [0, 1]})
    with pytest.warns(UserWarning, match="no label"):
        ds = BagDataset(bag_dir, labels, preload=True, dtype=np.float16)
    assert len(ds) == 2
    item = ds[1]
    assert item["X"].shape == (3, 7) and int(item["Y"]) == 1 and item["slide_id"] == "s2"
    with pytest.raises(FileNotFoundError, match="s9"):
        BagDataset(bag_dir, pd.DataFrame({"slide_id": ["s9"], "label": [1]}))
    with pytest.raises(ValueError, match=r"no column\(s\) \['y'\].*pass slide_col= / label_col="):
        BagDataset(bag_dir, labels, label_col="y")
