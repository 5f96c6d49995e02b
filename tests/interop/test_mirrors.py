"""Each mirror, read back the way its tool reads it (tests/interop/readers.py names the tool's code)."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from zoomfeat.bags import bag_path, open_bag
from zoomfeat.interop import export_bags, find_feature_sets

from .conftest import DIMS, EMPTY_ID, SLIDE_ID
from .readers import (
    ClamMILDataset,
    slideflow_bag_locations,
    slideflow_bags_tile_size,
    slideflow_find_bags,
    slideflow_load_bag,
    slideflow_path_to_name,
    stamp_detect_feature_type,
    stamp_get_coords,
    stamp_load_bag,
    stamp_slide_to_patient,
)


def test_clam_reads_pt_files_and_h5_files(bag_dir, tmp_path):
    result = export_bags(bag_dir, "clam", sets=["zoomldm_fused", "uni_5x"], dest=tmp_path / "clam")
    assert sorted(result.written) == ["uni_5x", "zoomldm_fused"]
    for name in result.written:
        data_dir = tmp_path / "clam" / name
        bag = open_bag(bag_path(bag_dir, name, SLIDE_ID))
        table = pd.DataFrame({"slide_id": [SLIDE_ID, EMPTY_ID], "label": [1, 0]})
        features, label = ClamMILDataset(data_dir, table)[0]  # training: pt_files
        assert isinstance(features, torch.Tensor) and features.dtype == torch.float32
        np.testing.assert_array_equal(features.numpy(), bag.features)
        assert label == 1 and features.shape[1] == DIMS[name] == result.dims[name]
        empty, _ = ClamMILDataset(data_dir, table)[1]
        assert empty.shape == (0, DIMS[name])
        features, _, coords = ClamMILDataset(data_dir, table, use_h5=True)[0]  # h5_files: the bag itself
        np.testing.assert_array_equal(features.numpy(), bag.features)
        np.testing.assert_array_equal(coords, bag.coords)
        link = data_dir / "h5_files" / f"{SLIDE_ID}.h5"
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # linked, not copied
        assert link.resolve() == bag_path(bag_dir, name, SLIDE_ID).resolve()


def test_stamp_reads_feats_through_the_external_link_with_micrometre_coords(bag_dir, tmp_path, monkeypatch):
    result = export_bags(bag_dir, "stamp", sets="uni_*", dest=tmp_path / "stamp")
    assert sorted(result.written) == ["uni_20x", "uni_5x", "uni_fused"]
    monkeypatch.chdir(tmp_path)  # the external link is relative to the mirror file, not the cwd
    for name in result.written:
        feature_dir = tmp_path / "stamp" / name
        assert stamp_detect_feature_type(feature_dir) == "tile"
        patients = stamp_slide_to_patient(feature_dir / "slide_table.csv", feature_dir)
        assert patients == {
            feature_dir / f"{SLIDE_ID}.h5": SLIDE_ID,
            feature_dir / f"{EMPTY_ID}.h5": EMPTY_ID,
        }
        src = open_bag(bag_path(bag_dir, name, SLIDE_ID))
        mpp = src.attrs["mpp"]
        feats, coords_um = stamp_load_bag([feature_dir / f"{SLIDE_ID}.h5"])
        np.testing.assert_array_equal(feats.numpy(), src.features)
        np.testing.assert_allclose(coords_um.numpy(), src.coords * mpp, rtol=1e-6)
        with h5py.File(feature_dir / f"{SLIDE_ID}.h5", "r") as h5:
            _, tile_size_um, tile_size_px = stamp_get_coords(h5)
            assert isinstance(h5.get("feats", getlink=True), h5py.ExternalLink)  # no copy of the features
            assert h5["feats"].shape == src.features.shape
        extent = src.coords_attrs.get("patch_size_level0_exact", src.coords_attrs["patch_size_level0"])
        assert tile_size_um == pytest.approx(extent * mpp) and tile_size_px == 256
        # STAMP's slide mpp (tile_size_um / tile_size_px) is the tile's: 0.5 at 20x, 2 at 5x, within 0.2%
        target = 10.0 / src.coords_attrs["target_magnification"]
        assert tile_size_um / tile_size_px == pytest.approx(target, rel=2e-3)
        feats, _ = stamp_load_bag([feature_dir / f"{EMPTY_ID}.h5"])
        assert feats.shape == (0, DIMS[name])


def test_slideflow_reads_pt_index_and_bags_config(bag_dir, tmp_path):
    result = export_bags(bag_dir, "slideflow", sets=["zoomldm_20x", "zoomldm_5x"], dest=tmp_path / "sf")
    for name, tile_um in (("zoomldm_20x", 128), ("zoomldm_5x", 512)):
        bags_dir = str(tmp_path / "sf" / name)
        bags = slideflow_find_bags(bags_dir)
        assert [slideflow_path_to_name(b) for b in bags] == [
            SLIDE_ID
        ]  # empty bags skipped, as slideflow does
        assert result.skipped[name] == [EMPTY_ID]
        src = open_bag(bag_path(bag_dir, name, SLIDE_ID))
        np.testing.assert_array_equal(slideflow_load_bag(bags[0]).numpy(), src.features)
        locations = slideflow_bag_locations(list(bags))[SLIDE_ID]
        half = src.coords_attrs["patch_size_level0"] // 2
        np.testing.assert_array_equal(locations, src.coords + half)  # tile centres, level-0 px
        assert slideflow_bags_tile_size(bags_dir) == (256, tile_um)
        config = json.loads((tmp_path / "sf" / name / "bags_config.json").read_text())
        assert config["num_features"] == DIMS[name]


def test_feature_sets_by_name_or_glob_and_clear_errors(bag_dir, tmp_path):
    assert sorted(fs.name for fs in find_feature_sets(bag_dir)) == sorted(DIMS)
    assert {fs.name for fs in find_feature_sets(bag_dir / "5x_256px_0px_overlap")} == {"uni_5x", "zoomldm_5x"}
    with pytest.raises(ValueError, match=r"\['conch\*'\] match no feature set .*found: "):
        find_feature_sets(bag_dir, ["conch*"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_feature_sets(tmp_path / "typo")
    with pytest.raises(ValueError, match="no feature sets found"):
        find_feature_sets(tmp_path)
    # another tool's bags without mpp: STAMP needs it, and says how to give it
    other = tmp_path / "trident" / "20x_256px_0px_overlap" / "features_conch_v15"
    other.mkdir(parents=True)
    with h5py.File(other / "s1.h5", "w") as f:
        f["features"] = np.ones((2, 3), np.float32)
        f["coords"] = np.array([[0, 0], [512, 0]])
        f["coords"].attrs["patch_size_level0"] = 512
    with pytest.raises(ValueError, match="pass mpp="):
        export_bags(tmp_path / "trident", "stamp")
    res = export_bags(tmp_path / "trident", "stamp", mpp=0.25)
    with h5py.File(res.dest / "conch_v15" / "s1.h5", "r") as h5:
        coords_um, tile_um, _ = stamp_get_coords(h5)
    assert tile_um == 128.0 and coords_um.tolist() == [[0.0, 0.0], [128.0, 0.0]]
