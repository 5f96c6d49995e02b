"""Bags as zoomfeat writes them (``SlideBagWriter`` over a real tile grid of the CMU slide), plus an empty bag."""

from __future__ import annotations

import numpy as np
import pytest

from zoomfeat.bags import FEATURE_SET_MAG, PerMag

SLIDE_ID = "CMU-1-Small-Region"
EMPTY_ID = "no-tissue"
DIMS = {"zoomldm_20x": 12, "zoomldm_5x": 12, "zoomldm_fused": 24, "uni_20x": 8, "uni_5x": 8, "uni_fused": 16}


def write_slide_bags(out_dir, slide, grid, slide_id, seed=0):
    """Write one slide's six bags and two coords files through zoomfeat's own writer (random features)."""
    from zoomfeat.features.writer import SlideBagWriter

    rng = np.random.default_rng(seed)
    kept = grid.children.kept
    coords20 = grid.children.xy[kept]
    parent_idx = grid.children.parent[kept]
    n = {20: len(coords20), 5: len(grid.parents)}
    attrs = {"mpp": float(slide.mpp), "config_hash": "test", "slide_id": slide_id}
    set_attrs = {s: {"encoder": s.split("_")[0]} for s in FEATURE_SET_MAG}
    writer = SlideBagWriter(
        out_dir, slide_id, dims=DIMS, coords=PerMag(x20=coords20, x5=grid.parents),
        coords_attrs=PerMag(x20=grid.coords_attrs(slide, "child", slide_id),
                            x5=grid.coords_attrs(slide, "parent", slide_id)),
        parent_idx=parent_idx, attrs=attrs, set_attrs=set_attrs,
    )  # fmt: skip
    with writer:
        for name, mag in FEATURE_SET_MAG.items():
            writer.write(name, 0, rng.normal(size=(n[mag], DIMS[name])).astype(np.float32))
        writer.finish()


@pytest.fixture(scope="session")
def bag_dir(tmp_path_factory, cmu_slide):
    """An extraction out_dir holding the CMU slide's bags and an empty slide's bags."""
    from zoomfeat.slide import Slide, TileGrid

    out = tmp_path_factory.mktemp("interop") / "features"
    slide = Slide.open(cmu_slide)
    grid = TileGrid.build(slide, min_tissue=0.75, progress=False, lattice="integer")  # what extraction writes
    assert grid.n_kept_children > 10
    write_slide_bags(out, slide, grid, SLIDE_ID)
    empty = TileGrid._empty(**{k: getattr(grid, k) for k in (
        "child_size_level0", "tile_px", "mag", "parent_mag", "min_tissue", "tissue_mask",
        "level0_width", "level0_height", "slide_mpp")})  # fmt: skip
    write_slide_bags(out, slide, empty, EMPTY_ID, seed=1)
    return out
