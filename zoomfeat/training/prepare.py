"""Build multi-scale training shards from slides (``python -m zoomfeat.prepare``).

For every slide and magnification index m (0=20x, 1=10x, 2=5x, ...) the tissue tiles are the
kept tiles of ``TileGrid.build(slide, 256, mag=20/2^m, parent_mag=20/2^(m+2))`` (one tissue mask
per slide, shared by all magnifications): tiles of 256*2^m px at 20x shown at 256 px. Per tile
the shards hold its VQ latent and the UNI grid of the 2^m x 2^m 20x tiles it covers
(average-pooled to at most 8x8); see :mod:`zoomfeat.training.shards`.

How pixels are read (the slide code does all reading and geometry):

- every 20x tile that any kept tile covers belongs to a 4x4 block (a 5x parent of the 20x
  lattice); each such block is read once (``Slide.read_region``, 1024 px at 20x) and split with
  ``split_parent`` into its 16 20x tiles (UNI input, and the m=0 tiles) and its 5x tile (the m=2
  tile) -- exactly the pixels feature extraction sees at 20x and 5x;
- tiles of the other magnifications are read at their own resolution with ``Slide.read_region``
  (antialiased Lanczos from the best pyramid level).

Each UNI embedding is computed once per slide and shared by every magnification. Slides are
resumable: a slide whose record says it is done with the same settings is skipped, and only the
magnifications a record lacks are computed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoomfeat.runtime.provenance import config_hash
from zoomfeat.training.shards import (
    FORMAT_VERSION,
    MAG_NAMES,
    ShardWriter,
    parse_mag,
    pool_grid,
    read_record,
)

log = logging.getLogger("zoomfeat.prepare")

TILE_PX = 256
RATIO = 4  # 20x tiles per 5x tile side


@dataclass
class PrepareConfig:
    out_dir: str
    mags: list[Any] = field(default_factory=lambda: ["20x", "10x", "5x", "2.5x", "1.25x"])
    min_tissue: float = 0.25
    mpp: float | None = None  # override every slide's resolution (um/px at level 0)
    batch_size: int = 32  # tiles per encoder / VQ batch
    num_workers: int = 2  # slide-reading DataLoader workers
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    pack_rows: int = 16384
    tissue: dict[str, Any] = field(default_factory=dict)  # keyword arguments of tissue_mask
    shard_index: int = 0  # this job's part of the slide list (Hydra multirun / SLURM arrays)
    shard_count: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.mags = sorted({parse_mag(m) for m in self.mags})
        if not self.mags:
            raise ValueError("mags is empty: name at least one magnification (e.g. mags=[20x,5x])")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(
                f"shard.index must be in [0, shard.count), got {self.shard_index}/{self.shard_count}"
            )


# ----------------------------------------------------------------------------------------------
# model helpers


def vq_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex) of the VQ autoencoder's weights: which VQ encoded a data directory."""
    h = hashlib.sha256()
    for name, t in sorted(model.vq.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _autocast(precision: str, device: torch.device):
    from zoomfeat.training.loop import autocast_ctx, resolve_precision

    return autocast_ctx(resolve_precision(precision, device), device)


class _Encoders:
    """UNI and the VQ encoder on uint8 tiles, batched, on one device."""

    def __init__(
        self, model: nn.Module, encoder: nn.Module, device: torch.device, precision: str, batch_size: int
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
            with _autocast(self.precision, self.device):
                emb = self.encoder(self.encoder.preprocess(x))
            out.append(emb.float().cpu().numpy().astype(np.float16))
        return np.concatenate(out) if out else np.zeros((0, self.encoder.embed_dim), np.float16)

    @torch.no_grad()
    def vq(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (N, 256, 256, 3) -> float16 (N, 3, 64, 64) pre-quantisation latents."""
        out = []
        for a in range(0, len(tiles), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(tiles[a : a + self.batch_size])).to(self.device)
            x = (
                x.permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1.0
            )  # NCHW: the channels_last CPU GroupNorm is inexact
            with _autocast(self.precision, self.device):
                z = self.model.encode(x)
            out.append(z.float().cpu().numpy().astype(np.float16))
        return np.concatenate(out) if out else np.zeros((0, 3, 64, 64), np.float16)


class _BlockDataset(torch.utils.data.Dataset):
    """Reads 4x4 blocks of 20x tiles (a 5x tile each) and splits them (DataLoader workers)."""

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


class _TileDataset(torch.utils.data.Dataset):
    """Reads single tiles at a magnification (``grid.read_child``)."""

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


def _loader(ds, num_workers: int, batch_size: int | None = None):
    kwargs: dict[str, Any] = {"num_workers": num_workers}
    if num_workers > 0:
        kwargs["prefetch_factor"] = 4
    if batch_size is None:
        return torch.utils.data.DataLoader(ds, batch_size=None, collate_fn=_identity, **kwargs)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=_stack, **kwargs)


def _lattice(grid) -> np.ndarray:
    """Lattice indices (ci, cj) of every child row of a TileGrid (its own magnification)."""
    r = np.arange(len(grid.children)) % (RATIO * RATIO)
    pij = grid.parent_ij[grid.children.parent] if len(grid.children) else np.zeros((0, 2), np.int64)
    return np.stack([RATIO * pij[:, 0] + r % RATIO, RATIO * pij[:, 1] + r // RATIO], axis=1).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# one slide


def prepare_slide(
    path: Path,
    writer: ShardWriter,
    encoders: _Encoders,
    cfg: PrepareConfig,
    mags: list[int],
    mpp: float | None = None,
) -> dict[str, Any]:
    """Tile, embed and encode one slide at ``mags`` and commit it to ``writer`` (``mpp``
    overrides the slide's resolution, else ``cfg.mpp``, else the file's)."""
    from zoomfeat.slide import Slide, TileGrid, detect_tissue

    t_start = time.perf_counter()
    slide = Slide.open(path, mpp=mpp if mpp is not None else cfg.mpp)
    mpp20 = 10.0 / 20.0
    s0 = TILE_PX * mpp20 / slide.mpp  # level-0 px per 20x tile (the 20x lattice of TileGrid)
    tissue = detect_tissue(slide, mpp=min(8.0, s0 * slide.mpp / 16), progress=False, **cfg.tissue)
    grids, kept_rows, lattices = {}, {}, {}
    for m in mags:
        mag = 20.0 / 2**m
        grids[m] = TileGrid.build(
            slide,
            TILE_PX,
            mag=mag,
            parent_mag=mag / RATIO,
            min_tissue=cfg.min_tissue,
            tissue=tissue,
            progress=False,
        )
        kept_rows[m] = np.flatnonzero(grids[m].children.kept)
        lattices[m] = _lattice(grids[m])[kept_rows[m]]

    # every 20x cell a kept tile covers, and the 4x4 blocks holding them
    cells_per_tile = {
        m: (lattices[m][:, None, None, :] * 2**m + _offsets(m)[None]).reshape(len(lattices[m]), 4**m, 2)
        for m in mags
    }
    all_cells = np.unique(
        np.concatenate([c.reshape(-1, 2) for c in cells_per_tile.values()] + [np.zeros((0, 2), np.int64)]),
        axis=0,
    )
    blocks, block_of_cell = np.unique(all_cells // RATIO, axis=0, return_inverse=True)
    block_of_cell = block_of_cell.reshape(-1)
    need = np.zeros((len(blocks), RATIO * RATIO), bool)
    r_in_block = (all_cells[:, 1] % RATIO) * RATIO + all_cells[:, 0] % RATIO
    need[block_of_cell, r_in_block] = True
    block_index = {tuple(b): k for k, b in enumerate(blocks.tolist())}
    cell_row = {tuple(c): k for k, c in enumerate(all_cells.tolist())}
    embeddings = np.zeros((len(all_cells), encoders.encoder.embed_dim), np.float16)

    # m=0 and m=2 tiles per block (they come out of the block reads)
    direct = {}
    for m in (0, 2):
        if m in mags:
            by_block: dict[int, list[int]] = {}
            for t, (ci, cj) in enumerate(lattices[m].tolist()):
                key = (ci // RATIO, cj // RATIO) if m == 0 else (ci, cj)
                by_block.setdefault(block_index[key], []).append(t)
            direct[m] = by_block

    def grid_of(m: int, t: int) -> np.ndarray:
        cells = cells_per_tile[m][t]
        emb = embeddings[[cell_row[tuple(c)] for c in cells.tolist()]]  # (4^m, C) row-major (dy, dx)
        side = 2**m
        g = emb.astype(np.float32).reshape(side, side, -1).transpose(2, 0, 1)
        return pool_grid(g).astype(np.float16)

    desc = f"{slide.slide_id}"
    counts = {}
    with writer.slide(
        slide.slide_id,
        source=str(path),
        extra={"mpp": slide.mpp, "magnification": slide.magnification, "dimensions": list(slide.dimensions)},
    ) as out:
        for m in mags:
            out.start(m, grids[m].patch_size_level0)
        # ---- phase A: blocks -> UNI of every needed 20x cell, m=0 and m=2 tiles
        pending: list[dict[str, Any]] = []
        pending_tiles = 0

        def flush() -> None:
            nonlocal pending, pending_tiles
            if not pending:
                return
            cell_imgs, cell_ids = [], []
            tiles = {0: ([], []), 2: ([], [])}
            for item in pending:
                b = item["i"]
                bi, bj = blocks[b]
                for r in np.flatnonzero(need[b]):
                    cell_imgs.append(item["children"][r])
                    cell_ids.append(cell_row[(int(bi * RATIO + r % RATIO), int(bj * RATIO + r // RATIO))])
                for t in direct.get(0, {}).get(b, []):
                    ci, cj = lattices[0][t]
                    tiles[0][0].append(item["children"][(cj % RATIO) * RATIO + ci % RATIO])
                    tiles[0][1].append(t)
                for t in direct.get(2, {}).get(b, []):
                    tiles[2][0].append(item["parent"])
                    tiles[2][1].append(t)
            if cell_imgs:
                embeddings[cell_ids] = encoders.uni(np.stack(cell_imgs))
            for m, (imgs, ts) in tiles.items():
                if imgs:
                    lat = encoders.vq(np.stack(imgs))
                    ssl = np.stack([grid_of(m, t) for t in ts])
                    xy = grids[m].children.xy[kept_rows[m][ts]]
                    out.append(m, lat, ssl, xy, grids[m].patch_size_level0)
            pending, pending_tiles = [], 0

        from tqdm.auto import tqdm

        loader = _loader(_BlockDataset(slide, blocks, s0, mpp20), cfg.num_workers)
        for item in tqdm(
            loader, total=len(blocks), desc=f"{desc} 20x/5x blocks", disable=not cfg.progress, leave=False
        ):
            pending.append(item)
            pending_tiles += int(need[item["i"]].sum())
            if pending_tiles >= cfg.batch_size:
                flush()
        flush()
        # ---- phase B: other magnifications, read at their own resolution
        for m in mags:
            if m in direct or not len(kept_rows[m]):
                continue
            loader = _loader(
                _TileDataset(slide, grids[m], kept_rows[m]), cfg.num_workers, batch_size=cfg.batch_size
            )
            done = 0
            for imgs in tqdm(loader, desc=f"{desc} {MAG_NAMES[m]}", disable=not cfg.progress, leave=False):
                ts = list(range(done, done + len(imgs)))
                lat = encoders.vq(imgs)
                ssl = np.stack([grid_of(m, t) for t in ts])
                out.append(m, lat, ssl, grids[m].children.xy[kept_rows[m][ts]], grids[m].patch_size_level0)
                done += len(imgs)
        counts = {MAG_NAMES[m]: int(len(kept_rows[m])) for m in mags}
    slide.close()
    return {
        "slide_id": slide.slide_id,
        "tiles": counts,
        "uni_tiles": int(len(all_cells)),
        "seconds": time.perf_counter() - t_start,
    }


def _offsets(m: int) -> np.ndarray:
    """(2^m, 2^m, 2) offsets (dx, dy) of the 20x cells inside a tile, row-major (dy, then dx)."""
    side = 2**m
    dy, dx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    return np.stack([dx, dy], axis=-1).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# many slides


def data_settings(cfg: PrepareConfig, model: nn.Module, encoder: nn.Module) -> dict[str, Any]:
    """What shapes the data (its hash decides whether a slide's record is still valid)."""
    return {
        "format": FORMAT_VERSION,
        "tile_px": TILE_PX,
        "min_tissue": cfg.min_tissue,
        "mpp": cfg.mpp,
        "tissue": dict(cfg.tissue),
        "encoder": f"{encoder.name}:{getattr(encoder, 'checkpoint_hash', '') or encoder.checkpoint_id}",
        "vq": vq_fingerprint(model),
    }


def prepare(
    inputs: list[str | Path], cfg: PrepareConfig, model: nn.Module, encoder: nn.Module
) -> dict[str, Any]:
    """Prepare every slide of ``inputs`` (this job's share) into ``cfg.out_dir``.

    ``model`` supplies the VQ encoder (ZoomLDM), ``encoder`` the UNI embeddings. Returns a
    summary: slides done / skipped / failed, tiles per magnification, seconds.
    """
    from zoomfeat.slide.manifest import discover, shard
    from zoomfeat.training.loop import resolve_precision

    specs = discover(inputs)
    if not specs:
        raise ValueError(
            f"no slides found in {list(inputs)}: pass slide files, directories of slides or manifest CSVs"
        )
    specs = shard(specs, cfg.shard_index, cfg.shard_count)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    precision = resolve_precision(cfg.precision, device)
    model.vq.to(device).eval()  # only the VQ encoder is used here
    encoder.to(device).eval()
    settings = data_settings(cfg, model, encoder)
    chash = config_hash(settings)
    info = {
        "encoder": settings["encoder"],
        "encoder_name": encoder.name,
        "encoder_checkpoint": encoder.checkpoint_id,
        "vq": settings["vq"],
        "vq_checkpoint": str(getattr(model, "checkpoint_id", "")),
        "model_config": getattr(model, "config", {}).get("name")
        if isinstance(getattr(model, "config", None), dict)
        else None,
        "tile_px": TILE_PX,
    }
    writer = ShardWriter(
        cfg.out_dir, ssl_channels=encoder.embed_dim, config_hash=chash, info=info, pack_rows=cfg.pack_rows
    )
    encoders = _Encoders(model, encoder, device, precision, cfg.batch_size)
    summary: dict[str, Any] = {"done": [], "skipped": [], "failed": {}, "tiles": {}, "config_hash": chash}
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    from zoomfeat.slide import SlideError

    with writer:
        for spec in tqdm(specs, desc="prepare", unit="slide", disable=not cfg.progress):
            path = spec.path
            rec = read_record(cfg.out_dir, path.stem)
            have = set(rec.get("mags", {})) if rec and rec.get("config_hash") == chash else set()
            todo = [
                m
                for m in cfg.mags
                if str(m) not in have or not (Path(cfg.out_dir) / rec["mags"][str(m)]["file"]).is_file()
            ]
            if not todo:
                summary["skipped"].append(path.stem)
                continue
            try:
                res = prepare_slide(path, writer, encoders, cfg, todo, mpp=spec.mpp)
            except (SlideError, FileNotFoundError) as err:
                log.error("%s: %s", path, err)
                summary["failed"][path.stem] = str(err)
                continue
            except Exception as err:  # noqa: BLE001 - one bad slide must not stop a cohort
                log.exception("%s: failed", path)
                summary["failed"][path.stem] = f"{type(err).__name__}: {err}"
                continue
            summary["done"].append(path.stem)
            for k, v in res["tiles"].items():
                summary["tiles"][k] = summary["tiles"].get(k, 0) + v
            log.info(
                "%s: %s tiles (%d UNI tiles) in %.1f s",
                path.stem,
                res["tiles"],
                res["uni_tiles"],
                res["seconds"],
            )
    summary["seconds"] = time.perf_counter() - t0
    summary["settings"] = settings
    return summary


__all__ = ["PrepareConfig", "prepare", "prepare_slide", "vq_fingerprint", "data_settings"]
