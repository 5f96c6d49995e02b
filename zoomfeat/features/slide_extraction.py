"""One slide through the pipeline, step by step (docs/ARCHITECTURE.md, "Data flow" and "Feature recipe").

:class:`SlideExtraction` runs these steps for one slide:

1. :meth:`~SlideExtraction.open_slide` -- open the slide (its MPP from the file, a manifest or the
   ``mpp`` override).
2. :meth:`~SlideExtraction.claim` -- check existing bags (complete with this config: skip; from
   another config: :class:`ConfigMismatchError` unless ``overwrite``; from another slide file with
   the same name: :class:`SlideIdentityError`; damaged: a warning, recomputed) and take the lock.
3. :meth:`~SlideExtraction.lay_grid` -- find the tissue, lay the 20x/5x tile grid, open the bag
   writer (every bag at its final size, under a temporary name).
4. :meth:`~SlideExtraction.read_parents` -- stream the kept 5x parents: DataLoader workers read each
   parent's 1024 px region at 20x once, split it into 16 children + the 5x tile and draw their
   per-tile noise (:mod:`zoomfeat.features.data`).
5. :meth:`~SlideExtraction.run_uni` -- the encoder on all 17 tiles of every parent (background
   children too: the 5x grid needs them), in full batches of ``batch_size``.
6. :meth:`~SlideExtraction.run_zoomldm` -- once a parent's 17 embeddings exist: ZoomLDM on each kept
   child (20x, own 1x1 grid, mag 0) and on the parent tile (5x, 4x4 children grid, mag 2), in full
   batches of ``batch_size`` tiles.
7. :meth:`~SlideExtraction.fuse_parent` -- as each parent completes (in order), its rows of the six
   bags are appended, fused rows being ``concat(f20_i, f5_parent(i))``.
8. :meth:`~SlideExtraction.publish` -- check every row was written, publish the files atomically
   (and the preview PNG).

Both queues are FIFO and every tile's inputs (pixels, grid, noise) depend only on the tile, so
features do not depend on batch size, worker count, order or shard (up to floating-point rounding
of the CPU kernels; the measured bound is in tests/features/conftest.py, ``batch_atol``).
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoomfeat.features.batching import ParentState, Piece, RowBuffer, queued, take
from zoomfeat.features.data import CHILDREN, NoiseSpec, ParentRegions, parent_loader
from zoomfeat.features.locks import SlideLock
from zoomfeat.features.outputs import bag_attrs, set_attrs
from zoomfeat.features.writer import SlideBagWriter, remove_stale_temporaries
from zoomfeat.runtime.atomic import ensure_dir
from zoomfeat.runtime.device import synchronize
from zoomfeat.runtime.units import BASE_MAG, CHILDREN_PER_SIDE, PARENT_MAG_INDEX, mag_index, magnification


@dataclass
class SlideResult:
    """What happened to one slide."""

    path: str
    slide_id: str
    status: str  # "done" | "skipped" | "locked" | "failed"
    n20: int = 0
    n5: int = 0
    seconds: float = 0.0
    error: str = ""
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def tiles(self) -> int:
        return self.n20 + self.n5

    def line(self) -> str:
        """One line for the run's log."""
        if self.status == "done":
            rate = self.tiles / self.seconds if self.seconds > 0 else float("nan")
            return f"{self.slide_id}: {self.n20} 20x + {self.n5} 5x tiles, {self.seconds:.1f} s, {rate:.2f} tiles/s"
        if self.status == "skipped":
            return f"{self.slide_id}: skipped ({self.error or 'complete bags with this config exist'})"
        if self.status == "locked":
            return f"{self.slide_id}: skipped (another process holds its lock)"
        return f"{self.slide_id}: FAILED: {self.error}"


class SlideExtraction:
    """Extract one slide into ``out_dir`` with an :class:`~zoomfeat.features.pipeline.Extractor`.

    Args:
        extractor: the :class:`~zoomfeat.features.pipeline.Extractor` (config, models, recipe hash;
            not imported here: the pipeline module imports this one).
        slide_path: the slide file; mpp: its resolution override (``None``: the config's, or the file's).
        out_dir: the output root.
    """

    #: ZoomLDM's magnification indices of the 20x children and the 5x parents
    MAG20, MAG5 = mag_index(BASE_MAG), PARENT_MAG_INDEX

    def __init__(
        self, extractor: Any, slide_path: str | Path, out_dir: str | Path, mpp: float | None = None
    ) -> None:
        self.ex = extractor
        self.cfg = extractor.cfg
        self.models = extractor.models
        self.device = extractor.device
        self.slide_path = slide_path
        self.mpp = mpp if mpp is not None else self.cfg.mpp
        self.out_dir = out_dir
        self.result: SlideResult | None = None  # made by step 1
        # model timings (seconds) of this slide, for benchmarks
        self.timings = {"uni": 0.0, "zoomldm": 0.0, "wait": 0.0}
        # the state the steps share, set by the step named
        self.slide = None  # 1: the open Slide
        self.grid = None  # 3: the TileGrid
        self.n_parents = 0  # 3: kept 5x parents P
        self.kept: np.ndarray | None = None  # 4: bool (P, 16), kept children of each parent
        self.items: dict[int, dict] = {}  # 4: loader items (tiles, noise) of parents in flight
        self.states: dict[int, ParentState] = {}  # 4-7: results of parents in flight
        self.queue_uni: deque[Piece] = deque()  # 4 -> 5
        self.queue_zoomldm: deque[Piece] = deque()  # 5 -> 6
        self.next_parent = 0  # 7: parents are fused and written strictly in order
        self.rows: RowBuffer | None = None  # 7
        self.pbar = None  # 4-7: tiles done

    def run(self) -> SlideResult:
        """Steps 1 to 8; returns the :class:`SlideResult` (``done``, ``skipped`` or ``locked``)."""
        t0 = time.perf_counter()
        self.open_slide()  # 1
        lock = SlideLock(self.out_dir, self.slide.slide_id)
        try:
            if not self.claim(lock):  # 2
                return self.result
            with self.lay_grid() as writer:  # 3
                if self.n_parents:
                    self.stream(writer)  # 4-7
                self.publish(writer)  # 8
        finally:
            lock.release()
            self.slide.close()
        self.result.seconds = time.perf_counter() - t0
        return self.result

    # ---------------------------------------------------------------- 1. open the slide
    def open_slide(self) -> None:
        from zoomfeat.slide import Slide

        self.slide = Slide.open(self.slide_path, mpp=self.mpp)
        self.result = SlideResult(str(self.slide_path), self.slide.slide_id, "done")

    # ---------------------------------------------------------------- 2. existing bags, lock
    def claim(self, lock: SlideLock) -> bool:
        """Whether this process extracts the slide (False: ``skipped`` or ``locked``, in the result).

        Complete bags with this very config and slide are always reused (delete them to force a
        recomputation); bags from another config raise unless ``overwrite=true``; outputs of
        another slide file under the same slide id always raise (:class:`SlideIdentityError`);
        damaged outputs are reported and recomputed.
        """
        sid = self.slide.slide_id
        ensure_dir(self.out_dir)  # an OutputError naming it when it cannot be written
        if self.ex.check_reusable(self.out_dir, sid, self.slide) == "complete":
            self.result.status, self.result.paths = "skipped", self.ex.outputs(self.out_dir, sid)
            return False
        if not lock.acquire():
            self.result.status = "locked"
            return False
        # another worker may have finished it while we were getting here
        if self.ex.check_reusable(self.out_dir, sid, self.slide, warn=False) == "complete":
            self.result.status, self.result.paths = "skipped", self.ex.outputs(self.out_dir, sid)
            return False
        remove_stale_temporaries(self.ex.outputs(self.out_dir, sid))
        return True

    # ---------------------------------------------------------------- 3. tissue, grid, writer
    def lay_grid(self) -> SlideBagWriter:
        """Build the tile grid and return the slide's open :class:`SlideBagWriter` (a context manager)."""
        from zoomfeat.slide import TileGrid

        cfg, slide = self.cfg, self.slide
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grid = TileGrid.build(
                slide,
                tile_px=cfg.tile_px,
                mag=BASE_MAG,
                parent_mag=magnification(PARENT_MAG_INDEX),
                min_tissue=cfg.tissue.min_tissue,
                progress=False,
                lattice="trident" if cfg.trident_compat else "integer",  # issue 10: coords multiples of p
            )
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.grid = grid
        kept = grid.children.kept
        self.n_parents = P = len(grid.parents)
        self.result.n20, self.result.n5 = int(kept.sum()), P
        if P == 0:
            warnings.warn(f"{slide.path}: no tissue tiles; writing empty (0, D) bags", stacklevel=4)
        return SlideBagWriter(
            self.out_dir,
            slide.slide_id,
            self.models.dims,
            grid.children.xy[kept],
            grid.parents,
            grid.coords_attrs(slide, "child"),
            grid.coords_attrs(slide, "parent"),
            grid.children.parent[kept],
            bag_attrs(self.ex, slide),
            set_attrs(cfg.model.name, cfg.encoder.name, self.models.dims),
            tile_px=cfg.tile_px,
        )

    # ---------------------------------------------------------------- 4-7. the stream
    def stream(self, writer: SlideBagWriter) -> None:
        """Read parents (4) and run both model stages (5, 6) as their queues fill; fuse and write
        complete parents in order (7)."""
        from tqdm.auto import tqdm

        cfg, dev, P = self.cfg, self.device, self.n_parents
        self.kept = self.grid.children.kept.reshape(P, CHILDREN)
        self.rows = RowBuffer(writer)
        self.ex.timings = self.timings
        noise = NoiseSpec(cfg.seed, self.slide.slide_id, self.models.latent_shape, cfg.features.ensemble)
        loader = parent_loader(
            ParentRegions(self.slide, self.grid, noise),
            cfg.workers_for(dev.type),
            pin_memory=dev.type == "cuda",
        )
        bs = cfg.batch_size
        total = int(self.kept.sum()) + P
        bar = {} if cfg.progress else {"disable": True}
        with tqdm(total=total, desc=self.slide.slide_id, unit="tile", leave=False, position=1, **bar) as pbar:
            self.pbar = pbar
            it = iter(loader)
            while True:
                t = time.perf_counter()
                batch = next(it, None)
                self.timings["wait"] += time.perf_counter() - t
                if batch is not None:
                    self.read_parents(batch)
                # full batches while there are enough tiles; everything left once input ends
                while queued(self.queue_uni) >= bs or (batch is None and self.queue_uni):
                    self.run_uni(take(self.queue_uni, bs))
                while queued(self.queue_zoomldm) >= bs or (batch is None and self.queue_zoomldm):
                    self.run_zoomldm(take(self.queue_zoomldm, bs))
                if batch is None:
                    break
            self.rows.flush()
        if self.states or self.next_parent != P:
            raise RuntimeError(f"{self.slide.path}: internal error, {len(self.states)} parent(s) unfinished")

    # ---------------------------------------------------------------- 4. parents in
    def read_parents(self, batch: dict) -> None:
        """Take one parent from the loader: its 17 tiles join the encoder queue."""
        dev = self.device
        i = int(batch["index"])
        item = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        self.items[i] = item
        self.states[i] = ParentState(
            int(self.kept[i].sum()), torch.empty((CHILDREN + 1, self.models.dims["uni_20x"]), device=dev)
        )
        self.queue_uni.append(Piece(i, 0, torch.cat([item["children"], item["parent"][None]])))

    # ---------------------------------------------------------------- 5. encoder
    def run_uni(self, pieces: list[Piece]) -> None:
        """One encoder batch; parents whose 17 embeddings are complete go to the ZoomLDM queue."""
        t = time.perf_counter()
        emb = self.models.embed(torch.cat([p.images for p in pieces]))
        synchronize(self.device)
        self.timings["uni"] += time.perf_counter() - t
        pos = 0
        for p in pieces:
            st = self.states[p.parent]
            st.emb[p.start : p.start + len(p)] = emb[pos : pos + len(p)]
            st.n_emb += len(p)
            pos += len(p)
            if st.n_emb == CHILDREN + 1:
                self.queue_parent_for_zoomldm(p.parent)

    def queue_parent_for_zoomldm(self, i: int) -> None:
        """Kept children with their own 1x1 grid (20x), and the parent tile with the 4x4 grid of its
        children (5x), join the ZoomLDM queue."""
        dev, side = self.device, CHILDREN_PER_SIDE
        st, item = self.states[i], self.items.pop(i)
        rows_i = np.flatnonzero(self.kept[i])
        if len(rows_i):
            sel = torch.as_tensor(rows_i, device=dev)
            g20 = st.emb[sel][:, :, None, None]
            self.queue_zoomldm.append(Piece(i, 0, item["children"][sel], self.MAG20, g20, item["noise20"]))
        g5 = st.emb[:CHILDREN].reshape(side, side, -1).permute(2, 0, 1)[None]
        self.queue_zoomldm.append(Piece(i, -1, item["parent"][None], self.MAG5, g5, item["noise5"][None]))

    # ---------------------------------------------------------------- 6. ZoomLDM
    def run_zoomldm(self, pieces: list[Piece]) -> None:
        """One ZoomLDM batch; then every complete parent, in order, is fused and written."""
        t = time.perf_counter()
        ctx = self.models.contexts([p.grids for p in pieces], [p.mag for p in pieces])
        feats = self.models.zoomldm_features(
            torch.cat([p.images for p in pieces]), ctx, torch.cat([p.noise for p in pieces])
        )
        synchronize(self.device)
        self.timings["zoomldm"] += time.perf_counter() - t
        pos = 0
        for p in pieces:
            st = self.states[p.parent]
            f = feats[pos : pos + len(p)]
            pos += len(p)
            if p.start < 0:
                st.f5 = f[0]
            else:
                if st.f20 is None:
                    st.f20 = torch.empty((st.n_kept, f.shape[1]), device=self.device)
                st.f20[p.start : p.start + len(p)] = f
                st.n20 += len(p)
        states = self.states
        while (
            self.next_parent in states
            and states[self.next_parent].f5 is not None
            and states[self.next_parent].n20 == states[self.next_parent].n_kept
        ):
            self.fuse_parent(self.next_parent)
            self.next_parent += 1

    # ---------------------------------------------------------------- 7. fuse + write rows
    def fuse_parent(self, i: int) -> None:
        """Parent ``i``'s rows of the six bags (fused: each child next to its parent) to the buffer."""
        st = self.states.pop(i)
        emb = st.emb.cpu().numpy()
        if st.n_kept:
            f20z = st.f20.cpu().numpy()
        else:
            f20z = np.zeros((0, self.models.dims["zoomldm_20x"]), np.float32)
        self.rows.add(f20z, st.f5.cpu().numpy(), emb[:CHILDREN][self.kept[i]], emb[CHILDREN])
        self.pbar.update(st.n_kept + 1)

    # ---------------------------------------------------------------- 8. publish
    def publish(self, writer: SlideBagWriter) -> None:
        """Publish the bags atomically (``paths`` in the result), then the optional preview."""
        paths = writer.finish()
        if self.cfg.preview:
            from zoomfeat.features.preview import save_preview

            paths["preview"] = save_preview(
                self.slide,
                self.grid,
                paths,
                Path(self.out_dir) / "previews" / f"{self.slide.slide_id}.png",
            )
        self.result.paths = paths
