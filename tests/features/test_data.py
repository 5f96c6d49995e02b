"""zoomfeat.features.data: parent regions read in DataLoader workers, with their tiles' noise."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from zoomfeat.features.data import NoiseSpec, ParentReaders, ParentRegions, parent_loader
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


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _assert_items_equal(ds: ParentRegions, items: list[dict]) -> None:
    assert [int(it["index"]) for it in items] == list(range(len(ds)))
    for i, item in enumerate(items):
        ref = ds[i]
        for key in ("children", "parent", "noise20", "noise5"):
            assert torch.equal(ref[key], item[key]), (i, key)


def test_reader_pool_reads_slide_after_slide_with_the_same_processes(small_slides):
    """ParentReaders starts its processes once: the second slide is read by the processes that
    read the first (no new process), its items exactly ParentRegions's; close ends them."""
    a, _ = _dataset(small_slides / "det_a.svs")
    b, _ = _dataset(small_slides / "det_b.svs")
    before = _children()
    pool = ParentReaders(2)
    try:
        _assert_items_equal(a, list(pool.parents(a)))
        readers = _children() - before
        assert len(readers) == 2
        _assert_items_equal(b, list(pool.parents(b)))
        _assert_items_equal(a, list(pool.parents(a)))  # back to the first slide: reopened
        assert _children() - before == readers
    finally:
        pool.close()
    assert not (_children() & readers)


def test_reader_pool_restarts_after_a_slide_read_in_part(small_slides):
    """A slide abandoned after its first parent (an error, a stop) ends the processes, so none of
    its queued requests reaches the next slide, which new processes read in full."""
    a, _ = _dataset(small_slides / "det_a.svs")
    b, _ = _dataset(small_slides / "det_b.svs")
    before = _children()
    pool = ParentReaders(1)
    try:
        it = pool.parents(a)
        assert int(next(it)["index"]) == 0
        first = _children() - before
        it.close()
        assert len(first) == 1 and not (_children() & first)
        _assert_items_equal(b, list(pool.parents(b)))
        assert len(_children() - before) == 1
    finally:
        pool.close()
    assert _children() == before
