"""One slide through the pipeline, step by step (docs/ARCHITECTURE.md, "Data flow" and "Feature recipe").

:class:`SlideExtraction` runs these steps for one slide:

1. :meth:`~SlideExtraction.open_slide` -- open the slide (its MPP from the file, a manifest or the
   ``mpp`` override).
2. :meth:`~SlideExtraction.claim` -- check the existing bags family by family
   (:mod:`zoomfeat.features.families`): every family complete with its own config hash: skip; a
   family from another config: :class:`ConfigMismatchError` unless ``overwrite``; outputs of
   another slide file with the same name: :class:`SlideIdentityError`; damaged: a warning, that
   family recomputed. Take the lock. Only the families not complete are computed and written.
3. :meth:`~SlideExtraction.lay_grid` -- find the tissue, lay the 20x/5x tile grid, open the bag
   writer (every bag to write at its final size, under a temporary name).
4. :meth:`~SlideExtraction.read_parents` -- stream the kept 5x parents: DataLoader workers read each
   parent's 1024 px region at 20x once, split it into 16 children + the 5x tile and draw their
   per-tile noise (:mod:`zoomfeat.features.data`).
5. :meth:`~SlideExtraction.run_encoders` -- every embedding job (the encoder families to write,
   and the conditioning encoder when a recipe is to be written) on all 17 tiles of every parent
   (background children too: the 5x grid needs them), in full batches of ``batch_size``.
6. :meth:`~SlideExtraction.run_zoomldm` -- once a parent's 17 embeddings exist: ZoomLDM on each kept
   child (20x, own 1x1 grid, mag 0) and on the parent tile (5x, 4x4 children grid, mag 2), in full
   batches of ``batch_size`` tiles; one VQ encoding and one UNet forward per (timestep, cond_px)
   and noise draw serve every recipe to write.
7. :meth:`~SlideExtraction.fuse_parent` -- as each parent completes (in order), its rows of every
   family's three bags are appended, fused rows being ``concat(f20_i, f5_parent(i))``.
8. :meth:`~SlideExtraction.publish` -- check every row was written, publish the files atomically
   (and the preview PNG).

Both queues are FIFO and every tile's inputs (pixels, grid, noise) depend only on the tile, so
features do not depend on batch size, worker count, order, shard or the other recipes and
encoders of the pass (up to floating-point rounding of the CPU kernels; the measured bound is in
tests/features/conftest.py, ``batch_atol``).
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
from zoomfeat.features.outputs import bag_attrs, sets_to_write
from zoomfeat.features.writer import SlideBagWriter, remove_stale_temporaries
from zoomfeat.runtime.atomic import ensure_dir
from zoomfeat.runtime.device import synchronize
from zoomfeat.runtime.provenance import canonical_json
from zoomfeat.runtime.units import BASE_MAG, CHILDREN_PER_SIDE, PARENT_MAG_INDEX, mag_index, magnification


@dataclass
class SlideResult:
    """What happened to one slide.

    ``written``: the bag families computed and written; ``reused``: those already complete.
    """

    path: str
    slide_id: str
    status: str  # "done" | "skipped" | "locked" | "failed"
    n20: int = 0
    n5: int = 0
    seconds: float = 0.0
    error: str = ""
    paths: dict[str, Path] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    @property
    def tiles(self) -> int:
        return self.n20 + self.n5

    def line(self) -> str:
        """One line for the run's log."""
        if self.status == "done":
            rate = self.tiles / self.seconds if self.seconds > 0 else float("nan")
            extra = (
                f" (new: {', '.join(self.written) or 'coords'}; kept: {', '.join(self.reused)})"
                if self.reused
                else ""
            )
            return f"{self.slide_id}: {self.n20} 20x + {self.n5} 5x tiles, {self.seconds:.1f} s, {rate:.2f} tiles/s{extra}"
        if self.status == "skipped":
            return f"{self.slide_id}: skipped ({self.error or 'complete bags with this config exist'})"
        if self.status == "locked":
            return f"{self.slide_id}: skipped (another process holds its lock)"
        return f"{self.slide_id}: FAILED: {self.error}"


class SlideExtraction:
    """Extract one slide into ``out_dir`` with an :class:`~zoomfeat.features.pipeline.Extractor`.

    Args:
        extractor: the :class:`~zoomfeat.features.pipeline.Extractor` (config, models, families;
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
        # model timings (seconds) of this slide, for benchmarks ("uni": every embedding job)
        self.timings = {"uni": 0.0, "zoomldm": 0.0, "wait": 0.0}
        # the state the steps share, set by the step named
        self.slide = None  # 1: the open Slide
        self.write: list[str] = []  # 2: the families to compute and write, in the pass's order
        self.write_coords: list[int] = []  # 2: the coords files to write (20, 5)
        self.recipes: list = []  # 2: the recipes among them
        self.jobs: list[str] = []  # 2: the embedding jobs they need
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
                if self.n_parents and self.write:
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
        """Whether this process extracts the slide (False: ``skipped`` or ``locked``, in the result);
        sets the families, recipes, embedding jobs and coords files to write.

        Complete families with this very config and slide are always reused (delete them to force
        a recomputation); families from another config raise unless ``overwrite=true`` (then only
        they are replaced); outputs of another slide file under the same slide id always raise
        (:class:`SlideIdentityError`); damaged families are reported and recomputed.
        """
        sid = self.slide.slide_id
        ensure_dir(self.out_dir)  # an OutputError naming it when it cannot be written
        if self.ex.check_reusable(self.out_dir, sid, self.slide).complete:
            self.result.status, self.result.paths = "skipped", self.ex.outputs(self.out_dir, sid)
            return False
        if not lock.acquire():
            self.result.status = "locked"
            return False
        # another worker may have finished it while we were getting here
        plan = self.ex.check_reusable(self.out_dir, sid, self.slide, warn=False)
        if plan.complete:
            self.result.status, self.result.paths = "skipped", self.ex.outputs(self.out_dir, sid)
            return False
        remove_stale_temporaries(self.ex.outputs(self.out_dir, sid))
        self.write, self.write_coords = plan.to_write(), plan.coords_to_write()
        self.result.written = list(self.write)
        self.result.reused = [f for f in self.ex.families if f not in self.write]
        m = self.models
        self.recipes = [r for r in m.recipes if r.name in self.write]
        cond = {m.cond_job(r.cond_px) for r in self.recipes}
        self.jobs = [j for j in m.jobs if j in self.write or j in cond]
        return True

    # ---------------------------------------------------------------- 3. tissue, grid, writer
    def lay_grid(self) -> SlideBagWriter:
        """Build the tile grid and return the slide's open :class:`SlideBagWriter` (a context manager)
        for the families (and coords files) to write."""
        from zoomfeat.slide import TileGrid

        cfg, slide, models = self.cfg, self.slide, self.models
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
        dims, per_set = sets_to_write([self.ex.families[f] for f in self.write], cfg, models)
        return SlideBagWriter(
            self.out_dir,
            slide.slide_id,
            dims,
            grid.children.xy[kept],
            grid.parents,
            grid.coords_attrs(slide, "child"),
            grid.coords_attrs(slide, "parent"),
            grid.children.parent[kept],
            bag_attrs(self.ex, slide),
            per_set,
            tile_px=cfg.tile_px,
            write_coords=self.write_coords,
            patches_attrs={"grid_hash": self.ex.grid_hash, "grid": canonical_json(self.ex.grid)},
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
        # every draw a pass's recipe may use; draw j is the same whatever the count (a prefix)
        draws = self.models.max_draws if self.recipes else 0
        noise = NoiseSpec(cfg.seed, self.slide.slide_id, self.models.latent_shape, draws)
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
                    self.run_encoders(take(self.queue_uni, bs))
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
        emb = {job: torch.empty((CHILDREN + 1, self.models.job_dim(job)), device=dev) for job in self.jobs}
        self.states[i] = ParentState(int(self.kept[i].sum()), emb)
        self.queue_uni.append(Piece(i, 0, torch.cat([item["children"], item["parent"][None]])))

    # ---------------------------------------------------------------- 5. encoders
    def run_encoders(self, pieces: list[Piece]) -> None:
        """One batch through every embedding job; parents whose 17 embeddings are complete go to the
        ZoomLDM queue (or, with no recipe to write, straight to step 7)."""
        t = time.perf_counter()
        images = torch.cat([p.images for p in pieces])
        emb = {job: self.models.embed(images, job) for job in self.jobs}
        synchronize(self.device)
        self.timings["uni"] += time.perf_counter() - t
        pos = 0
        for p in pieces:
            st = self.states[p.parent]
            for job, e in emb.items():
                st.emb[job][p.start : p.start + len(p)] = e[pos : pos + len(p)]
            st.n_emb += len(p)
            pos += len(p)
            if st.n_emb == CHILDREN + 1:
                if self.recipes:
                    self.queue_parent_for_zoomldm(p.parent)
                else:
                    self.items.pop(p.parent)
        self.fuse_complete()

    def queue_parent_for_zoomldm(self, i: int) -> None:
        """Kept children with their own 1x1 grid (20x), and the parent tile with the 4x4 grid of its
        children (5x), join the ZoomLDM queue; one grid per conditioning size of the recipes."""
        dev, side = self.device, CHILDREN_PER_SIDE
        st, item = self.states[i], self.items.pop(i)
        pxs = dict.fromkeys(r.cond_px for r in self.recipes)
        emb = {px: st.emb[self.models.cond_job(px)] for px in pxs}
        rows_i = np.flatnonzero(self.kept[i])
        if len(rows_i):
            sel = torch.as_tensor(rows_i, device=dev)
            g20 = {px: e[sel][:, :, None, None] for px, e in emb.items()}
            self.queue_zoomldm.append(Piece(i, 0, item["children"][sel], self.MAG20, g20, item["noise20"]))
        g5 = {px: e[:CHILDREN].reshape(side, side, -1).permute(2, 0, 1)[None] for px, e in emb.items()}
        self.queue_zoomldm.append(Piece(i, -1, item["parent"][None], self.MAG5, g5, item["noise5"][None]))

    # ---------------------------------------------------------------- 6. ZoomLDM
    def run_zoomldm(self, pieces: list[Piece]) -> None:
        """One ZoomLDM batch (every recipe to write); then every complete parent, in order, is
        fused and written."""
        t = time.perf_counter()
        mags = [p.mag for p in pieces]
        ctx = {px: self.models.contexts([p.grids[px] for p in pieces], mags) for px in pieces[0].grids}
        feats = self.models.zoomldm_features(
            torch.cat([p.images for p in pieces]),
            ctx,
            torch.cat([p.noise for p in pieces]),
            recipes=self.recipes,
        )
        synchronize(self.device)
        self.timings["zoomldm"] += time.perf_counter() - t
        pos = 0
        for p in pieces:
            st = self.states[p.parent]
            f = {name: v[pos : pos + len(p)] for name, v in feats.items()}
            pos += len(p)
            if p.start < 0:
                st.f5 = {name: v[0] for name, v in f.items()}
            else:
                for name, v in f.items():
                    if name not in st.f20:
                        st.f20[name] = torch.empty((st.n_kept, v.shape[1]), device=self.device)
                    st.f20[name][p.start : p.start + len(p)] = v
                st.n20 += len(p)
        self.fuse_complete()

    def fuse_complete(self) -> None:
        """Fuse and write every complete parent at the front of the order (step 7)."""
        while self.next_parent in self.states and self.states[self.next_parent].complete(bool(self.recipes)):
            self.fuse_parent(self.next_parent)
            self.next_parent += 1

    # ---------------------------------------------------------------- 7. fuse + write rows
    def fuse_parent(self, i: int) -> None:
        """Parent ``i``'s rows of every family to write (fused: each child next to its parent) to the buffer."""
        st = self.states.pop(i)
        kept = self.kept[i]
        rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in self.write:
            if name in st.emb:  # an encoder family: its job has the family's name
                e = st.emb[name].cpu().numpy()
                rows[name] = (e[:CHILDREN][kept], e[CHILDREN])
            else:
                d = self.models.dims[f"{name}_20x"]
                f20 = st.f20[name].cpu().numpy() if st.n_kept else np.zeros((0, d), np.float32)
                rows[name] = (f20, st.f5[name].cpu().numpy())
        self.rows.add(rows)
        self.pbar.update(st.n_kept + 1)

    # ---------------------------------------------------------------- 8. publish
    def publish(self, writer: SlideBagWriter) -> None:
        """Publish the bags atomically (``paths`` in the result: every family's, reused ones too),
        then the optional preview."""
        writer.finish()
        paths = self.ex.outputs(self.out_dir, self.slide.slide_id)
        if self.cfg.preview:
            from zoomfeat.features.preview import save_preview

            paths["preview"] = save_preview(
                self.slide,
                self.grid,
                paths,
                Path(self.out_dir) / "previews" / f"{self.slide.slide_id}.png",
            )
        self.result.paths = paths
