"""Re-batching tiles of many parents into full model batches, and gathering their rows in order.

Parents arrive one at a time (17 tiles each: 16 children + the 5x tile); the models want full
batches of ``batch_size`` tiles. Each model stage has a FIFO queue of :class:`Piece` s (runs of
tiles of one parent); :func:`take` pops exactly one batch from its front, splitting a piece when
needed. A :class:`ParentState` collects one parent's results until it is complete; complete parents
are handed, strictly in order, to the :class:`RowBuffer`, which fuses and writes their rows in blocks:
the sets of each bag family being written (``{family}_20x``, ``{family}_5x``, ``{family}_fused``,
as ``bags.sets`` and ``bags.fused`` ask).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import torch

from zoomfeat.features.fuse import fuse
from zoomfeat.features.recipes import family_sets
from zoomfeat.features.writer import SlideBagWriter
from zoomfeat.runtime.units import CHILDREN_PER_SIDE


@dataclass
class Piece:
    """A run of tiles of one parent waiting for a model.

    Attributes:
        parent: the parent's row in the grid.
        start: index of the first tile within its parent's list for this stage (-1: the 5x tile).
        images: uint8 (n, H, W, 3) on the device.
        mag: ZoomLDM stage: magnification index of the tiles.
        grids: ZoomLDM stage: ``{cond_px: raw conditioning grids (n, D_uni, h, w)}``.
        noise: ZoomLDM stage: (n, draws, *latent_shape).
    """

    parent: int
    start: int
    images: torch.Tensor
    mag: int = 0
    grids: dict[int, torch.Tensor] | None = None
    noise: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)

    def split(self, n: int) -> tuple[Piece, Piece]:
        """(the first ``n`` tiles, the rest)."""

        def cut(t, a, b):
            if isinstance(t, dict):
                return {k: v[a:b] for k, v in t.items()}
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
        emb: ``{job: (17, D_job)}`` embeddings of every embedding job: the 16 children, then the
            parent tile (only the rows of the tiles the job embeds are filled).
        n_emb: tiles embedded so far, over the slide's embedding queues; n_need: how many in all
            (17 when every job embeds every tile).
        f20: ``{recipe: (n_kept, D_r)}`` ZoomLDM features of the kept children; n20: rows filled so far.
        f5: ``{recipe: (D_r,)}`` ZoomLDM features of the parent tile (filled together: one piece).
        need20, need5: whether ZoomLDM runs on the kept children / on the parent tile.
    """

    n_kept: int
    emb: dict[str, torch.Tensor]
    n_emb: int = 0
    f20: dict[str, torch.Tensor] = field(default_factory=dict)
    n20: int = 0
    f5: dict[str, torch.Tensor] | None = None
    n_need: int = CHILDREN_PER_SIDE**2 + 1
    need20: bool = True
    need5: bool = True

    def complete(self, recipes: bool) -> bool:
        """Every embedding in and, when ``recipes`` are computed, every ZoomLDM row asked for too."""
        if self.n_emb != self.n_need:
            return False
        done20 = not self.need20 or self.n20 == self.n_kept
        done5 = not self.need5 or self.f5 is not None
        return not recipes or (done20 and done5)


class RowBuffer:
    """Parents finish in order: gather their rows of every family's three sets and write them in blocks.

    Args:
        writer: the slide's open bag writer.
        block_rows: write once this many rows (20x + 5x) are pending.
        sets: the sets written (None: all three of every family; ``bags.sets``, ``bags.fused``).
    """

    def __init__(
        self, writer: SlideBagWriter, block_rows: int = 512, *, sets: Collection[str] | None = None
    ) -> None:
        self.writer = writer
        self.sets = None if sets is None else frozenset(sets)
        self.block_rows = block_rows
        self.next = {20: 0, 5: 0}
        self.rows: dict[str, list[np.ndarray]] = {}
        self.mag: dict[str, int] = {}
        self.pending = 0

    def add(self, families: dict[str, tuple[np.ndarray | None, np.ndarray | None]]) -> None:
        """Add one parent: ``{family: (f20 (n, D) rows of its kept children, f5 (D,) of itself)}``.

        Only the sets the writer writes get rows (a part it does not need may be ``None``). The
        fused rows are ``concat(f20_i, f5)``: every child next to its own parent.
        """
        n = None
        for family, (f20, f5) in families.items():
            s20, s5, sf = family_sets(family)
            wanted = (s20, s5, sf) if self.sets is None else self.sets
            parts: list[tuple[str, int, np.ndarray | None]] = [
                (s20, 20, f20),
                (s5, 5, None if f5 is None else f5[None]),
            ]
            if sf in wanted:
                if f20 is None or f5 is None:
                    raise ValueError(f"family {family}: the fused set needs both its 20x and 5x rows")
                own = np.zeros(len(f20), np.int64)  # each child's parent: row 0 of this parent's 5x rows
                parts.append((sf, 20, fuse(f20, f5[None], own)))
            for name, mag, r in parts:
                if name not in wanted:
                    continue
                if r is None:
                    raise ValueError(f"family {family}: set {name} is written but its rows were not computed")
                self.rows.setdefault(name, []).append(r)
                self.mag[name] = mag
            if f20 is not None:
                if n is not None and n != len(f20):
                    raise ValueError(f"family {family}: {len(f20)} 20x rows, another family has {n}")
                n = len(f20)
        self.pending += (n or 0) + 1
        if self.pending >= self.block_rows:
            self.flush()

    def flush(self) -> None:
        """Write every pending row."""
        starts = dict(self.next)
        for name, parts in self.rows.items():
            if not parts:
                continue
            block = np.concatenate(parts, axis=0)
            mag = self.mag[name]
            self.writer.write(name, starts[mag], block)
            self.next[mag] = starts[mag] + len(block)
            parts.clear()
        self.pending = 0
