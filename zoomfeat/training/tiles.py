"""Which pixels ``prepare`` reads, and how: 4x4 blocks of 20x tiles, and single tiles at other magnifications.

A tile at magnification index m covers 2^m x 2^m 20x tiles ("cells") on the 20x lattice of
:class:`zoomfeat.slide.TileGrid` (cell (i, j) at level-0 ``(i * s0, j * s0)``, s0 = level-0 px per
20x tile). Every cell any kept tile covers belongs to a block of 4x4 cells (a 5x tile); each such
block is read once at 20x (1024 px) and split with ``split_parent`` into its 16 20x tiles and its
5x tile -- exactly the pixels feature extraction sees at 20x and 5x. Tiles of the other
magnifications are read at their own resolution (``grid.read_child``: antialiased Lanczos from the
best pyramid level). The datasets run in DataLoader workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from zoomfeat.runtime.stopping import ignore_stop_signals
from zoomfeat.runtime.units import CHILDREN_PER_SIDE, TILE_PX

#: 20x tiles per 5x tile side (a block is RATIO x RATIO cells)
RATIO = CHILDREN_PER_SIDE


class BlockDataset(torch.utils.data.Dataset):
    """Reads 4x4 blocks of 20x tiles (a 5x tile each) and splits them.

    Items: ``{"i": block row, "children": uint8 (16, 256, 256, 3) row-major (dy, dx),
    "parent": uint8 (256, 256, 3) the 5x tile}``.
    """

    def __init__(self, slide, blocks: np.ndarray, s0: float, mpp20: float) -> None:
        self.slide, self.blocks, self.s0, self.mpp20 = slide, blocks, s0, mpp20

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from zoomfeat.slide import split_parent

        bi, bj = self.blocks[i]
        region = self.slide.read_region(
            bi * RATIO * self.s0, bj * RATIO * self.s0, RATIO * TILE_PX, self.mpp20
        )
        children, parent = split_parent(region)
        return {"i": i, "children": children, "parent": parent}


class TileDataset(torch.utils.data.Dataset):
    """Reads single tiles at a magnification (``grid.read_child``): uint8 (256, 256, 3) each."""

    def __init__(self, slide, grid, rows: np.ndarray) -> None:
        self.slide, self.grid, self.rows = slide, grid, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.grid.read_child(self.slide, int(self.rows[i]))


def _identity(item: Any) -> Any:
    return item


def _stack(items: list[np.ndarray]) -> np.ndarray:
    return np.stack(items)


def loader(ds, num_workers: int, batch_size: int | None = None) -> torch.utils.data.DataLoader:
    """Items one by one (``batch_size=None``) or stacked in batches, read by ``num_workers`` processes."""
    kwargs: dict[str, Any] = {"num_workers": num_workers}
    if num_workers > 0:
        # workers ignore SIGTERM/SIGINT: the parent abandons its slide and ends them (runtime.stopping)
        kwargs.update(prefetch_factor=4, worker_init_fn=ignore_stop_signals)
    if batch_size is None:
        return torch.utils.data.DataLoader(ds, batch_size=None, collate_fn=_identity, **kwargs)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=_stack, **kwargs)


def lattice(grid) -> np.ndarray:
    """int64 (N, 2) lattice indices (ci, cj) of every child row of a TileGrid (its own magnification)."""
    r = np.arange(len(grid.children)) % (RATIO * RATIO)
    pij = grid.parent_ij[grid.children.parent] if len(grid.children) else np.zeros((0, 2), np.int64)
    return np.stack([RATIO * pij[:, 0] + r % RATIO, RATIO * pij[:, 1] + r // RATIO], axis=1).astype(np.int64)


def cell_offsets(m: int) -> np.ndarray:
    """int64 (2^m, 2^m, 2) offsets (dx, dy) of the 20x cells inside a tile, row-major (dy, then dx)."""
    side = 2**m
    dy, dx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    return np.stack([dx, dy], axis=-1).astype(np.int64)
