"""prepare's pixel geometry: the cells inside a tile, row-major (dy, then dx)."""

from __future__ import annotations

import numpy as np

from zoomfeat.training.tiles import RATIO, cell_offsets


def test_cell_offsets_row_major():
    assert RATIO == 4
    assert cell_offsets(0).tolist() == [[[0, 0]]]
    off = cell_offsets(2)
    assert off.shape == (4, 4, 2) and off.dtype == np.int64
    flat = off.reshape(-1, 2)
    assert flat[:5].tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [0, 1]]  # (dx, dy), dx fastest
