"""zoomfeat.features.batching: full batches from pieces of parents; rows fused and written in order."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from zoomfeat.features.batching import Piece, RowBuffer, queued, take


def _piece(parent: int, n: int) -> Piece:
    grids = {224: torch.arange(n) * 10, 256: torch.arange(n) * 20}
    return Piece(parent, 0, torch.arange(n), mag=2, grids=grids, noise=torch.arange(n) * 100)


def test_take_fills_a_batch_across_parents_and_splits_the_last_piece():
    q = deque([_piece(0, 3), _piece(1, 4)])
    assert queued(q) == 7
    batch = take(q, 5)
    assert [(p.parent, p.start, len(p)) for p in batch] == [(0, 0, 3), (1, 0, 2)]
    rest = q[0]
    assert (rest.parent, rest.start, len(rest), rest.mag) == (1, 2, 2, 2)
    assert (
        rest.images.tolist() == [2, 3]
        and rest.grids[224].tolist() == [20, 30]
        and rest.grids[256].tolist() == [40, 60]
        and rest.noise.tolist() == [200, 300]
    )
    assert [len(p) for p in take(q, 5)] == [2] and not q


class _Writer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, np.ndarray]] = []

    def write(self, name: str, start: int, rows: np.ndarray) -> None:
        self.calls.append((name, start, rows))


def test_row_buffer_fuses_each_child_with_its_parent_and_writes_blocks_in_order():
    """Any families, three sets each; the recipe-named family 'zoomldm-t50-out2' works like the classic ones."""
    w = _Writer()
    buf = RowBuffer(w, block_rows=4)
    z5, u5 = np.full(2, 7, np.float32), np.full(1, 9, np.float32)
    buf.add({"zoomldm": (np.ones((2, 2), np.float32), z5), "uni": (np.zeros((2, 1), np.float32), u5),
             "zoomldm-t50-out2": (np.full((2, 1), 5, np.float32), u5 + 2)})  # 3 rows pending  # fmt: skip
    assert not w.calls
    buf.add({"zoomldm": (np.zeros((0, 2), np.float32), z5 + 1), "uni": (np.zeros((0, 1), np.float32), u5 + 1),
             "zoomldm-t50-out2": (np.zeros((0, 1), np.float32), u5)})  # 4: flush  # fmt: skip
    written = {name: (start, rows) for name, start, rows in w.calls}
    assert len(w.calls) == 9
    start, fused = written["zoomldm_fused"]
    assert start == 0 and fused.tolist() == [[1, 1, 7, 7], [1, 1, 7, 7]]
    assert written["uni_fused"][1].tolist() == [[0, 9], [0, 9]]
    assert written["zoomldm-t50-out2_fused"][1].tolist() == [[5, 11], [5, 11]]
    assert written["zoomldm_5x"][1].tolist() == [[7, 7], [8, 8]]
    buf.add({"zoomldm": (np.full((1, 2), 3, np.float32), z5), "uni": (np.zeros((1, 1), np.float32), u5),
             "zoomldm-t50-out2": (np.zeros((1, 1), np.float32), u5)})  # fmt: skip
    buf.flush()
    later = {name: start for name, start, _ in w.calls[9:]}
    assert later["zoomldm_20x"] == 2 and later["zoomldm_5x"] == 2 and later["uni_fused"] == 2
    assert later["zoomldm-t50-out2_5x"] == 2
