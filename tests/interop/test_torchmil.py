"""torchmil's ``TridentWSIDataset`` (the installed 1.0.2) on zoomfeat's bags: docs/bags.md's call,
and its adjacency equal to the true lattice adjacency (issue 10)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from zoomfeat.bags import FEATURE_SET_MAG, bag_path, mag_dir, open_bag

from .conftest import SLIDE_ID, write_slide_bags


def lattice_edges(cells: np.ndarray) -> set[tuple[int, int]]:
    """Directed edges between distinct tiles whose lattice cells touch (8-neighbourhood)."""
    d = np.abs(cells[:, None, :] - cells[None, :, :]).max(-1)
    return {(int(a), int(b)) for a, b in zip(*np.nonzero(d == 1))}


def torchmil_items(out_dir, feature_set: str, labels):
    """docs/bags.md's torchmil 1.0.2 call: base_path = the magnification folder, patch_size = p."""
    from torchmil.datasets import TridentWSIDataset

    base = f"{mag_dir(out_dir, FEATURE_SET_MAG[feature_set])}/"
    with h5py.File(f"{base}features_{feature_set}/{SLIDE_ID}.h5") as f:
        p = int(f["coords"].attrs["patch_size_level0"])
    ds = TridentWSIDataset(
        base_path=base, labels_path=str(labels), feature_extractor=feature_set, patch_size=p,
        wsi_name_col="slide", wsi_label_col="label", bag_keys=["X", "Y", "adj", "coords"],
        wsi_names=[SLIDE_ID], norm_adj=False,
    )  # fmt: skip
    return ds[0]


@pytest.fixture(scope="module")
def synthetic_bags(tmp_path_factory, synthetic_slide_factory):
    """Bags of a synthetic 0.504 um/px slide (p = 254 for s = 253.97) under their own out_dir."""
    from zoomfeat.slide import Slide, TileGrid

    path = synthetic_slide_factory(
        "torchmil0.504", width=2600, height=1800, mpp=0.504, levels=1, tissue_fraction=0.7
    )
    slide = Slide.open(path)
    out = tmp_path_factory.mktemp("torchmil") / "features"
    write_slide_bags(out, slide, TileGrid.build(slide, lattice="integer", progress=False), SLIDE_ID)
    return out


@pytest.mark.parametrize("feature_set", ["uni_20x", "zoomldm_fused", "uni_5x"])
@pytest.mark.parametrize("which", ["cmu", "synthetic"])
def test_torchmil_adjacency_is_the_true_lattice_adjacency(
    bag_dir, synthetic_bags, tmp_path, feature_set, which
):
    out = bag_dir if which == "cmu" else synthetic_bags
    labels = tmp_path / "labels.csv"
    labels.write_text(f"slide,label\n{SLIDE_ID}.svs,1\n")
    bag = open_bag(bag_path(out, feature_set, SLIDE_ID))
    p = bag.coords_attrs["patch_size_level0"]
    cells = bag.coords // p
    np.testing.assert_array_equal(cells * p, bag.coords)  # the lattice: coords are multiples of p
    assert len(np.unique(cells, axis=0)) == len(bag)
    item = torchmil_items(out, feature_set, labels)
    # Exact on any CPU: coords are int64 and torchmil returns the stored float32 features as read
    # (no arithmetic), so anything but bit-equality means it read another row or file.
    np.testing.assert_array_equal(item["X"].numpy(), bag.features)
    np.testing.assert_array_equal(item["coords"].numpy(), cells)
    adj = item["adj"].coalesce()
    i, j = adj.indices().numpy()
    edges = {(int(a), int(b)) for a, b in zip(i, j) if a != b}
    truth = lattice_edges(cells)
    assert len(truth) > 0 and edges == truth
