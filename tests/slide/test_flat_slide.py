"""Tissue detection and the tile grid on single-level ("flat") tiled TIFFs: the level is sampled in
strips (bounded memory, a progress bar, a warning naming the cost) instead of read in full.

The slides are real tiled TIFFs written by tifffile with nearly every tile absent (byte count 0,
which openslide shows as background) and a few blocks of tissue-coloured JPEG tiles, read through
openslide like any slide."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from zoomfeat.slide import Slide, detect_tissue
from zoomfeat.slide.grid import TileGrid
from zoomfeat.slide.tissue import sampled_thumbnail

TILE = 512
#: tissue blocks in TIFF tiles: (first tile row, first tile column, rows, columns)
BLOCKS = ((20, 25, 4, 5), (50, 40, 3, 2))


def _write_flat(path, side: int, blocks=BLOCKS) -> None:
    import tifffile

    rng = np.random.default_rng(0)
    pink = np.stack([np.clip(v + rng.integers(-3, 4, (TILE, TILE)), 0, 255) for v in (200, 120, 170)], -1)
    pink = pink.astype(np.uint8)
    white = np.full((TILE, TILE, 3), 245, np.uint8)
    tissue = {(r0 + a, c0 + b) for r0, c0, h, w in blocks for a in range(h) for b in range(w)}
    n = -(-side // TILE)

    def tiles():
        for i in range(n):
            for j in range(n):  # the first tile must be an array: tifffile reads the dtype from it
                yield pink if (i, j) in tissue else (white if i == j == 0 else None)

    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE),
                     photometric="rgb", compression="jpeg", bigtiff=True,
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")  # fmt: skip


def test_flat_40k_slide_tissue_and_grid(tmp_path, capfd):
    """40000 x 40000 px, one level (1.6 Gpx: above the 2^30 px full-read limit): the grid is built
    through the sampled thumbnail with a warning naming the cost and a progress bar; the mask is
    the tissue blocks exactly (their edges fall on mask pixel edges: 512 px tiles, 16 px per mask
    pixel at 8 um/px) and the kept 20x tiles are the blocks' 256 px children, no others."""
    path = tmp_path / "flat.tif"
    _write_flat(path, 40000)
    assert path.stat().st_size < 2_000_000  # absent tiles cost 16 bytes each
    slide = Slide.open(path)
    assert slide.level_count == 1 and slide.dimensions == (40000, 40000) and slide.mpp == pytest.approx(0.5)
    with pytest.warns(
        UserWarning, match=r"no pyramid level near 8 um/px \(level 0 is 40000x40000 px = 1.6 Gpx\)"
    ):
        grid = TileGrid.build(slide, lattice="integer", progress=True)
    assert "tissue (flat slide) flat" in capfd.readouterr().err  # the progress bar
    tm = grid.tissue_mask
    assert tm.mask.shape == (2500, 2500) and tm.downsample_x == tm.downsample_y == 16
    want = np.zeros((2500, 2500), bool)
    for r0, c0, h, w in BLOCKS:  # a tile is 32 x 32 mask px
        want[32 * r0 : 32 * (r0 + h), 32 * c0 : 32 * (c0 + w)] = True
    assert np.array_equal(tm.mask, want)
    # the 20x tiles (256 level-0 px at 0.5 um/px): 4 per TIFF tile of a block, and only those
    kept = {tuple(xy) for xy in grid.children.xy[grid.children.kept].astype(int).tolist()}
    want_kept = {
        (256 * x, 256 * y)
        for r0, c0, h, w in BLOCKS
        for y in range(2 * r0, 2 * (r0 + h))
        for x in range(2 * c0, 2 * (c0 + w))
    }
    assert kept == want_kept and grid.n_kept_children == 4 * (4 * 5 + 3 * 2)


def test_sampled_thumbnail_memory_is_bounded_and_agrees_with_the_full_read(tmp_path):
    """On a 6000 px flat slide the sampled thumbnail (forced with max_read_px=1) gives the mask of
    the full read (Lanczos over every pixel), and its thumbnail differs only at block edges, where
    Lanczos rings and the box mean does not. Its traced allocations stay near the thumbnail's own
    size (the strip is one row), never the level's 6000 x 6000 x 3 bytes."""
    path = tmp_path / "small.tif"
    _write_flat(path, 6000, blocks=((3, 4, 3, 2), (7, 1, 2, 2)))
    slide = Slide.open(path)
    full = detect_tissue(slide, mpp=8.0, progress=False)  # 36 Mpx: read in full
    with pytest.warns(UserWarning, match="samples 2 of every 16 rows"):
        sampled = detect_tissue(slide, mpp=8.0, progress=False, max_read_px=1)
    assert np.array_equal(sampled.mask, full.mask) and sampled.mask.any()
    diff = np.abs(sampled.thumbnail.astype(int) - full.thumbnail.astype(int)).max(axis=2)
    assert (diff > 2).mean() < 0.02  # edge pixels only
    tracemalloc.start()
    try:
        thumb, _, _ = sampled_thumbnail(slide, mpp=8.0, progress=False, strip_px=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert thumb.shape == (375, 375, 3) and np.array_equal(thumb, sampled.thumbnail)
    assert peak < 4 * thumb.nbytes + 200_000 < 6000 * 6000 * 3 // 20
