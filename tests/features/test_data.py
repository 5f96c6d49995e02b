"""zoomfeat.features.data: parent regions read in DataLoader workers, with their tiles' noise."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from zoomfeat.features.data import NoiseSpec, ParentRegions, parent_loader
from zoomfeat.features.noise import tile_noise
from zoomfeat.slide import Slide, TileGrid, split_parent


def _dataset(path):
    slide = Slide.open(path)
    grid = TileGrid.build(slide, min_tissue=0.5, progress=False)
    return ParentRegions(slide, grid, NoiseSpec(7, slide.slide_id, (3, 64, 64), 2)), grid


def test_item_is_one_region_read_split_into_tiles_with_their_noise(small_slides):
    ds, grid = _dataset(small_slides / "det_a.svs")
    assert len(ds) == len(grid.parents) == 2
    item = ds[1]
    children, parent = split_parent(grid.read_parent(ds.slide, 1))
    assert torch.equal(item["children"], torch.from_numpy(children)) and item["children"].shape == (
        16,
        256,
        256,
        3,
    )
    assert torch.equal(item["parent"], torch.from_numpy(parent))
    kept = np.flatnonzero(grid.children.kept[16:32]) + 16
    assert item["noise20"].shape == (len(kept), 2, 3, 64, 64)
    x, y = grid.children.xy[kept[-1]]
    assert torch.equal(item["noise20"][-1], tile_noise(7, "det_a", 20, x, y, (3, 64, 64), 2))
    px, py = grid.parents[1]
    assert torch.equal(item["noise5"], tile_noise(7, "det_a", 5, px, py, (3, 64, 64), 2))


def test_workers_and_pickling_give_the_same_items(small_slides):
    ds, _ = _dataset(small_slides / "det_a.svs")
    ref = [ds[i] for i in range(len(ds))]
    again = pickle.loads(pickle.dumps(ds))  # what a spawn/forkserver worker receives
    for loader in (parent_loader(ds, num_workers=2), [again[i] for i in range(len(again))]):
        items = list(loader)
        assert [int(it["index"]) for it in items] == [0, 1]
        for a, b in zip(ref, items):
            for key in ("children", "parent", "noise20", "noise5"):
                assert torch.equal(a[key], b[key]), key
