"""Re-batching tiles of many parents into full model batches, and gathering their rows in order.

Parents arrive one at a time (17 tiles each: 16 children + the 5x tile); the models want full
batches of ``batch_size`` tiles. Each model stage has a FIFO queue of :class:`Piece` s (runs of
tiles of one parent); :func:`take` pops exactly one batch from its front, splitting a piece when
needed. A :class:`ParentState` collects one parent's results until it is complete; complete parents
are handed, strictly in order, to the :class:`RowBuffer`, which fuses and writes their rows in blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from zoomfeat.bags import FEATURE_SET_MAG, FEATURE_SETS
from zoomfeat.features.fuse import fuse
from zoomfeat.features.writer import SlideBagWriter


@dataclass
class Piece:
    """A run of tiles of one parent waiting for a model.

    Attributes:
        parent: the parent's row in the grid.
        start: index of the first tile within its parent's list for this stage (-1: the 5x tile).
        images: uint8 (n, H, W, 3) on the device.
        mag: ZoomLDM stage: magnification index of the tiles.
        grids: ZoomLDM stage: raw UNI grids (n, D_uni, h, w).
        noise: ZoomLDM stage: (n, draws, *latent_shape).
    """

    parent: int
    start: int
    images: torch.Tensor
    mag: int = 0
    grids: torch.Tensor | None = None
    noise: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)

    def split(self, n: int) -> tuple[Piece, Piece]:
        """(the first ``n`` tiles, the rest)."""

        def cut(t, a, b):
            return None if t is None else t[a:b]

        head = Piece(
            self.parent, self.start, self.images[:n], self.mag, cut(self.grids, 0, n), cut(self.noise, 0, n)
        )
        tail = Piece(self.parent, self.start + n, self.images[n:], self.mag, cut(self.grids, n, None),
                     cut(self.noise, n, None))  # fmt: skip
        return head, tail


def take(queue: deque[Piece], n: int) -> list[Piece]:
    """Pop pieces totalling at most ``n`` tiles from the front of ``queue`` (splitting one if needed)."""
    out, total = [], 0
    while queue and total < n:
        piece = queue.popleft()
        if total + len(piece) > n:
            piece, rest = piece.split(n - total)
            queue.appendleft(rest)
        out.append(piece)
        total += len(piece)
    return out


def queued(queue: deque[Piece]) -> int:
    """Number of tiles waiting in ``queue``."""
    return sum(len(p) for p in queue)


@dataclass
class ParentState:
    """One parent's results while its tiles go through the models.

    Attributes:
        n_kept: number of kept 20x children.
        emb: (17, D_uni) encoder embeddings: the 16 children, then the parent tile.
        n_emb: embeddings filled so far.
        f20: (n_kept, D_zoom) ZoomLDM features of the kept children; n20: rows filled so far.
        f5: (D_zoom,) ZoomLDM feature of the parent tile.
    """

    n_kept: int
    emb: torch.Tensor
    n_emb: int = 0
    f20: torch.Tensor | None = None
    n20: int = 0
    f5: torch.Tensor | None = None


class RowBuffer:
    """Parents finish in order: gather their rows of the six bags and write them in blocks.

    Args:
        writer: the slide's open bag writer.
        block_rows: write once this many rows (20x + 5x) are pending.
    """

    def __init__(self, writer: SlideBagWriter, block_rows: int = 512) -> None:
        self.writer = writer
        self.block_rows = block_rows
        self.next = {20: 0, 5: 0}
        self.rows: dict[str, list[np.ndarray]] = {name: [] for name in FEATURE_SETS}
        self.pending = 0

    def add(self, f20z: np.ndarray, f5z: np.ndarray, f20u: np.ndarray, f5u: np.ndarray) -> None:
        """Add one parent: (n, D) rows of its kept children and (D,) of itself, ZoomLDM and UNI.

        The fused rows are ``concat(f20_i, f5)``: every child next to its own parent.
        """
        own = np.zeros(len(f20z), np.int64)  # each child's parent: row 0 of this parent's 5x rows
        rows = {
            "zoomldm_20x": f20z,
            "zoomldm_5x": f5z[None],
            "zoomldm_fused": fuse(f20z, f5z[None], own),
            "uni_20x": f20u,
            "uni_5x": f5u[None],
            "uni_fused": fuse(f20u, f5u[None], own),
        }
        for name, r in rows.items():
            self.rows[name].append(r)
        self.pending += len(f20z) + 1
        if self.pending >= self.block_rows:
            self.flush()

    def flush(self) -> None:
        """Write every pending row."""
        starts = dict(self.next)
        for name, parts in self.rows.items():
            if not parts:
                continue
            block = np.concatenate(parts, axis=0)
            mag = FEATURE_SET_MAG[name]
            self.writer.write(name, starts[mag], block)
            self.next[mag] = starts[mag] + len(block)
            parts.clear()
        self.pending = 0
