"""One slide into training shards: tile, embed with UNI, encode with the VQ, at every magnification asked.

For magnification index m the tissue tiles are the kept tiles of
``TileGrid.build(slide, 256, mag=20/2^m, parent_mag=20/2^(m+2))`` (one tissue mask per slide,
shared by all magnifications): tiles of 256*2^m px at 20x shown at 256 px. Per tile the shards
hold its VQ latent and the UNI grid of the 2^m x 2^m 20x tiles ("cells") it covers,
average-pooled to at most 8x8 (docs/ARCHITECTURE.md, "Training"). Each cell's UNI embedding is
computed once per slide and shared by every magnification; how pixels are read is in
:mod:`zoomfeat.training.tiles`.

:class:`SlidePreparer` runs in numbered steps: 1. open the slide, 2. tissue and a tile grid per
magnification, 3. plan the cells and 4x4 blocks to read, 4. read the blocks (UNI of every cell,
the 20x and 5x tiles), 5. the other magnifications at their own resolution, 6. the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zoomfeat.runtime import stopping
from zoomfeat.runtime.device import autocast
from zoomfeat.runtime.units import MPP_20X, TILE_PX, magnification
from zoomfeat.training.config import PrepareConfig
from zoomfeat.training.shards import MAG_NAMES, ShardWriter, pool_grid
from zoomfeat.training.tiles import RATIO, BlockDataset, TileDataset, cell_offsets, lattice, loader

if TYPE_CHECKING:
    from zoomfeat.encoders.base import TileEncoder
    from zoomfeat.model.zoomldm import ZoomLDM


#: magnification indices that come out of the block reads (20x children, 5x parent)
DIRECT_MAGS = (0, 2)


class TileEncoders:
    """UNI and the VQ encoder on uint8 tiles, batched, on one device (inference, no gradients)."""

    def __init__(
        self, model: ZoomLDM, encoder: TileEncoder, *, device: torch.device, precision: str, batch_size: int
    ) -> None:
        self.model = model
        self.encoder = encoder
        self.device = device
        self.precision = precision
        self.batch_size = batch_size

    @torch.no_grad()
    def uni(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (N, 256, 256, 3) -> float16 (N, C)."""
        out = []
        for a in range(0, len(tiles), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(tiles[a : a + self.batch_size])).to(self.device)
            with autocast(self.device, self.precision):
                emb = self.encoder(self.encoder.preprocess(x))
            out.append(emb.float().cpu().numpy().astype(np.float16))
        return np.concatenate(out) if out else np.zeros((0, self.encoder.embed_dim), np.float16)

    @torch.no_grad()
    def vq(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (N, 256, 256, 3) -> float16 (N, 3, 64, 64) pre-quantisation latents."""
        out = []
        for a in range(0, len(tiles), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(tiles[a : a + self.batch_size])).to(self.device)
            # NCHW: the channels_last CPU GroupNorm is inexact
            x = x.permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1.0
            with autocast(self.device, self.precision):
                z = self.model.encode(x)
            out.append(z.float().cpu().numpy().astype(np.float16))
        return np.concatenate(out) if out else np.zeros((0, 3, 64, 64), np.float16)


class SlidePreparer:
    """Tile, embed and encode one slide at ``mags`` and commit it to a :class:`ShardWriter`.

    Args:
        path: the slide file.
        encoders: UNI + VQ on the device.
        cfg: min_tissue, tissue, mpp, batch_size, num_workers, progress.
        mags: magnification indices to compute (those the slide's record lacks).
        mpp: overrides the slide's resolution (a manifest's mpp column), else ``cfg.mpp``, else the file's.
    """

    def __init__(
        self,
        path: Path,
        encoders: TileEncoders,
        *,
        cfg: PrepareConfig,
        mags: list[int],
        mpp: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.encoders = encoders
        self.cfg = cfg
        self.mags = list(mags)
        self.mpp = mpp if mpp is not None else cfg.mpp

    def run(self, writer: ShardWriter) -> dict[str, Any]:
        """Steps 1-6; returns ``slide_id``, ``tiles`` per magnification name, ``uni_tiles``, ``seconds``."""
        t_start = time.perf_counter()
        self.open_slide()  # 1
        try:
            self.build_grids()  # 2
            self.plan_blocks()  # 3
            with writer.slide(
                self.slide.slide_id,
                source=str(self.path),
                extra={
                    "mpp": self.slide.mpp,
                    "magnification": self.slide.magnification,
                    "dimensions": list(self.slide.dimensions),
                },
            ) as out:
                for m in self.mags:
                    out.start(m, self.grids[m].patch_size_level0)
                self.encode_blocks(out)  # 4
                self.encode_other_mags(out)  # 5
        finally:
            self.slide.close()
        return {  # 6
            "slide_id": self.slide.slide_id,
            "tiles": {MAG_NAMES[m]: int(len(self.kept_rows[m])) for m in self.mags},
            "uni_tiles": int(len(self.all_cells)),
            "seconds": time.perf_counter() - t_start,
        }

    # -- 1. ---------------------------------------------------------------------------------------

    def open_slide(self) -> None:
        """Open the slide; ``s0`` = level-0 px per 20x tile (the 20x lattice of TileGrid)."""
        from zoomfeat.slide import Slide

        self.slide = Slide.open(self.path, mpp=self.mpp)
        self.s0 = TILE_PX * MPP_20X / self.slide.mpp

    # -- 2. ---------------------------------------------------------------------------------------

    def build_grids(self) -> None:
        """One tissue mask, then per magnification the tile grid, its kept rows and their lattice cells."""
        from zoomfeat.slide import TileGrid, detect_tissue

        cfg, slide = self.cfg, self.slide
        tissue = detect_tissue(slide, mpp=min(8.0, self.s0 * slide.mpp / 16), progress=False, **cfg.tissue)
        self.grids, self.kept_rows, self.lattices = {}, {}, {}
        for m in self.mags:
            mag = magnification(m)
            self.grids[m] = TileGrid.build(
                slide,
                tile_px=TILE_PX,
                mag=mag,
                parent_mag=mag / RATIO,
                min_tissue=cfg.min_tissue,
                tissue=tissue,
                progress=False,
            )
            self.kept_rows[m] = np.flatnonzero(self.grids[m].children.kept)
            self.lattices[m] = lattice(self.grids[m])[self.kept_rows[m]]

    # -- 3. ---------------------------------------------------------------------------------------

    def plan_blocks(self) -> None:
        """Every 20x cell a kept tile covers, the 4x4 blocks holding them, which cells of each block
        are needed, and which 20x / 5x tiles each block yields directly."""
        mags, lattices = self.mags, self.lattices
        self.cells_per_tile = {
            m: (lattices[m][:, None, None, :] * 2**m + cell_offsets(m)[None]).reshape(
                len(lattices[m]), 4**m, 2
            )
            for m in mags
        }
        all_cells = np.unique(
            np.concatenate(
                [c.reshape(-1, 2) for c in self.cells_per_tile.values()] + [np.zeros((0, 2), np.int64)]
            ),
            axis=0,
        )
        blocks, block_of_cell = np.unique(all_cells // RATIO, axis=0, return_inverse=True)
        block_of_cell = block_of_cell.reshape(-1)
        need = np.zeros((len(blocks), RATIO * RATIO), bool)
        r_in_block = (all_cells[:, 1] % RATIO) * RATIO + all_cells[:, 0] % RATIO
        need[block_of_cell, r_in_block] = True
        block_index = {tuple(b): k for k, b in enumerate(blocks.tolist())}
        self.all_cells, self.blocks, self.need = all_cells, blocks, need
        self.cell_row = {tuple(c): k for k, c in enumerate(all_cells.tolist())}
        self.embeddings = np.zeros((len(all_cells), self.encoders.encoder.embed_dim), np.float16)
        # m=0 and m=2 tiles per block (they come out of the block reads)
        self.direct: dict[int, dict[int, list[int]]] = {}
        for m in DIRECT_MAGS:
            if m in mags:
                by_block: dict[int, list[int]] = {}
                for t, (ci, cj) in enumerate(lattices[m].tolist()):
                    key = (ci // RATIO, cj // RATIO) if m == 0 else (ci, cj)
                    by_block.setdefault(block_index[key], []).append(t)
                self.direct[m] = by_block

    def grid_of(self, m: int, t: int) -> np.ndarray:
        """float16 (C, g, g): the pooled UNI grid of kept tile ``t`` at ``m`` (its cells' embeddings)."""
        cells = self.cells_per_tile[m][t]
        emb = self.embeddings[
            [self.cell_row[tuple(c)] for c in cells.tolist()]
        ]  # (4^m, C) row-major (dy, dx)
        side = 2**m
        g = emb.astype(np.float32).reshape(side, side, -1).transpose(2, 0, 1)
        return pool_grid(g).astype(np.float16)

    # -- 4. ---------------------------------------------------------------------------------------

    def encode_blocks(self, out) -> None:
        """Read every block once; UNI of its needed cells, VQ of its 20x / 5x tiles, in batches of
        about ``batch_size`` cells (the grids of a block's tiles need its cells' embeddings first)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        pending: list[dict[str, Any]] = []
        pending_cells = 0
        blocks = loader(BlockDataset(self.slide, self.blocks, self.s0, MPP_20X), cfg.num_workers)
        for item in tqdm(
            blocks,
            total=len(self.blocks),
            desc=f"{self.slide.slide_id} 20x/5x blocks",
            disable=not cfg.progress,
            leave=False,
        ):
            stopping.check(f"{self.slide.slide_id} abandoned")  # a signal: the slide's temporaries go
            pending.append(item)
            pending_cells += int(self.need[item["i"]].sum())
            if pending_cells >= cfg.batch_size:
                self._flush_blocks(pending, out)
                pending, pending_cells = [], 0
        self._flush_blocks(pending, out)

    def _flush_blocks(self, pending: list[dict[str, Any]], out) -> None:
        if not pending:
            return
        cell_imgs, cell_ids = [], []
        tiles: dict[int, tuple[list, list]] = {0: ([], []), 2: ([], [])}
        for item in pending:
            b = item["i"]
            bi, bj = self.blocks[b]
            for r in np.flatnonzero(self.need[b]):
                cell_imgs.append(item["children"][r])
                cell_ids.append(self.cell_row[(int(bi * RATIO + r % RATIO), int(bj * RATIO + r // RATIO))])
            for t in self.direct.get(0, {}).get(b, []):
                ci, cj = self.lattices[0][t]
                tiles[0][0].append(item["children"][(cj % RATIO) * RATIO + ci % RATIO])
                tiles[0][1].append(t)
            for t in self.direct.get(2, {}).get(b, []):
                tiles[2][0].append(item["parent"])
                tiles[2][1].append(t)
        if cell_imgs:
            self.embeddings[cell_ids] = self.encoders.uni(np.stack(cell_imgs))
        for m, (imgs, ts) in tiles.items():
            if imgs:
                self._append(out, m, self.encoders.vq(np.stack(imgs)), ts)

    def _append(self, out, m: int, latents: np.ndarray, ts: list[int]) -> None:
        ssl = np.stack([self.grid_of(m, t) for t in ts])
        xy = self.grids[m].children.xy[self.kept_rows[m][ts]]
        out.append(m, latents, ssl, xy, tile_size_level0=self.grids[m].patch_size_level0)

    # -- 5. ---------------------------------------------------------------------------------------

    def encode_other_mags(self, out) -> None:
        """Magnifications other than 20x / 5x: tiles read at their own resolution, VQ-encoded in batches."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        for m in self.mags:
            if m in self.direct or not len(self.kept_rows[m]):
                continue
            batches = loader(
                TileDataset(self.slide, self.grids[m], self.kept_rows[m]),
                cfg.num_workers,
                batch_size=cfg.batch_size,
            )
            done = 0
            for imgs in tqdm(
                batches, desc=f"{self.slide.slide_id} {MAG_NAMES[m]}", disable=not cfg.progress, leave=False
            ):
                stopping.check(f"{self.slide.slide_id} abandoned")
                ts = list(range(done, done + len(imgs)))
                self._append(out, m, self.encoders.vq(imgs), ts)
                done += len(imgs)
