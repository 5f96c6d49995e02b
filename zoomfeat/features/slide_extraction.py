"""One slide through the pipeline, step by step (docs/ARCHITECTURE.md, "Data flow" and "Feature recipe").

:class:`SlideExtraction` runs these steps for one slide:

1. :meth:`~SlideExtraction.open_slide` -- open the slide (its MPP from the file, a manifest or the
   ``mpp`` override).
2. :meth:`~SlideExtraction.claim` -- the slide's :class:`~zoomfeat.features.families.SlidePlan`
   (given by the runner, which planned every slide up front, or made here: one look at the disk)
   decides family by family: every family complete with its own config hash: skip; a family from
   another config: :class:`ConfigMismatchError` unless ``overwrite``; outputs of another slide
   file with the same name: :class:`SlideIdentityError`; damaged: a warning, that family
   recomputed. Take the lock; if a ``stat`` shows the outputs changed since the plan was made
   (another process finished the slide meanwhile), plan again. Only the families not complete
   are computed and written.
3. :meth:`~SlideExtraction.lay_grid` -- find the tissue, lay the 20x/5x tile grid, open the bag
   writer (every bag to write at its final size, under a temporary name).
4. :meth:`~SlideExtraction.read_parents` -- stream the kept 5x parents: reader processes
   (``num_workers``; the pass's :class:`~zoomfeat.features.data.ParentReaders`, started once and
   kept from slide to slide) read each parent's 1024 px region at 20x once, split it into 16
   children + the 5x tile and draw their per-tile noise (:mod:`zoomfeat.features.data`).
5. :meth:`~SlideExtraction.run_encoders` -- every embedding job (the encoder families to write,
   and the conditioning encoder when a recipe is to be written) on the tiles the plan's
   :class:`~zoomfeat.features.families.Work` lists for it (``bags.sets``): the kept children for
   20x rows, the 5x tile for 5x rows, the background children only for a recipe's 5x grid; one
   queue per group of jobs embedding the same tiles, in full batches of ``batch_size``.
6. :meth:`~SlideExtraction.run_zoomldm` -- once a parent's embeddings exist: ZoomLDM on each kept
   child (20x, own 1x1 grid, mag 0) and on the parent tile (5x, 4x4 children grid, mag 2), as the
   work asks, in full
   batches of ``batch_size`` tiles; one VQ encoding and one UNet forward per (timestep, cond_px)
   and noise draw serve every recipe to write.
7. :meth:`~SlideExtraction.fuse_parent` -- as each parent completes (in order), its rows of every
   family's three bags are appended, fused rows being ``concat(f20_i, f5_parent(i))``.
8. :meth:`~SlideExtraction.derive_from_bags` -- the fused files the plan derives from their
   family's 20x and 5x bags (:attr:`~zoomfeat.features.families.FamilyPlan.from_bags`) are
   filled from those files; a slide with nothing else to do skips steps 3-7: its writer takes
   the tiles stored in the bags (no tissue detection, no pixel read, no model call).
9. :meth:`~SlideExtraction.publish` -- check every row was written, write the coords files, run
   the plan's ``before_publish`` checks (the one point right before anything is renamed into
   place), publish the files atomically (and the preview PNG).

:func:`execute_slide` is the one per-slide executor of the single-process runner and of the
device workers: it runs these steps and turns a slide's failure into a ``failed``
:class:`SlideResult`. Progress, tests and other observers follow a slide through
:class:`SlideHooks` (``on_slide_start``, ``on_batch``, ``on_slide_end``, ``cancelled``); the steps
never reach back into the :class:`~zoomfeat.features.pipeline.Extractor`: they take the pass
(:class:`~zoomfeat.features.families.ExtractionPass`), the plan and the hooks.

Both queues are FIFO and every tile's inputs (pixels, grid, noise) depend only on the tile, so
features do not depend on batch size, worker count, order, shard or the other recipes and
encoders of the pass (up to floating-point rounding of the CPU kernels; the measured bound is in
tests/features/conftest.py, ``batch_atol``).
"""

from __future__ import annotations

import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoomfeat.bags import PerMag
from zoomfeat.features.batching import ParentState, Piece, RowBuffer, queued, take
from zoomfeat.features.data import CHILDREN, NoiseSpec, ParentReaders, ParentRegions, parent_loader
from zoomfeat.features.families import ExtractionPass, SlidePlan
from zoomfeat.features.locks import SlideLock
from zoomfeat.features.outputs import SlideIdentityError, bag_attrs, sets_to_write
from zoomfeat.features.store import StoredGrid, StoreParents, check_store, open_writer, store_only
from zoomfeat.features.writer import SlideBagWriter, bag_layout, remove_stale_temporaries
from zoomfeat.runtime.atomic import ensure_dir
from zoomfeat.runtime.device import synchronize
from zoomfeat.runtime.disk import DiskFullError, check_free_space, disk_full_error, is_disk_full
from zoomfeat.runtime.errors import ConfigMismatchError
from zoomfeat.runtime.heap import release_freed_memory
from zoomfeat.runtime.provenance import canonical_json
from zoomfeat.runtime.units import BASE_MAG, CHILDREN_PER_SIDE, PARENT_MAG_INDEX, mag_index, magnification
from zoomfeat.slide.manifest import SlideSpec
from zoomfeat.slide.remote import SlideCache
from zoomfeat.tilestore import StoreReader, StoreWriter


@dataclass
class SlideResult:
    """What happened to one slide.

    ``written``: the bag families written (computed, or their fused file derived from the bags:
    ``derived``); ``reused``: those already complete.
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
    #: model and loader seconds ("uni": every embedding job, "zoomldm", "wait": for the loader)
    timings: dict[str, float] = field(default_factory=dict)
    #: the tile store's use (``store=DIR``): "read" | "write" | "fill" (complete bags, entry written) | ""
    store: str = ""
    #: families of ``written`` whose fused file was derived from their 20x and 5x bags (no model call)
    derived: list[str] = field(default_factory=list)

    @classmethod
    def failure(cls, path: str | Path, slide_id: str, err: BaseException | str) -> SlideResult:
        """A ``failed`` result naming the error (``Type: message``)."""
        error = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        return cls(str(path), slide_id, "failed", error=error)

    @property
    def tiles(self) -> int:
        return self.n20 + self.n5

    def line(self) -> str:
        """One line for the run's log."""
        if self.status == "done":
            rate = self.tiles / self.seconds if self.seconds > 0 else float("nan")
            new = [f"{f}_fused (from the 20x and 5x bags)" if f in self.derived else f for f in self.written]
            extra = (
                f" (new: {', '.join(new) or ('tile-store entry' if self.store == 'fill' else 'coords')};"
                f" kept: {', '.join(self.reused)})"
                if self.reused
                else f" (new: {', '.join(new)})"
                if self.derived
                else ""
            )
            if self.derived and not self.tiles:  # nothing read of the slide: no tile count, no rate
                return f"{self.slide_id}: no tile read, {self.seconds:.1f} s{extra}"
            return f"{self.slide_id}: {self.n20} 20x + {self.n5} 5x tiles, {self.seconds:.1f} s, {rate:.2f} tiles/s{extra}"
        if self.status == "skipped":
            return f"{self.slide_id}: skipped ({self.error or 'complete bags with this config exist'})"
        if self.status == "locked":
            return f"{self.slide_id}: skipped (another process holds its lock)"
        return f"{self.slide_id}: FAILED: {self.error}"


class DamagedOutputWarning(UserWarning):
    """An existing bag or coords file is damaged (unreadable, truncated, unfinished): recomputed."""


class SlideCancelled(Exception):
    """The ``cancelled`` hook stopped a slide: nothing of it was published (the run decides what next)."""


@dataclass
class SlideHooks:
    """Callbacks through which a slide's run is observed (progress bars, device workers, tests).

    Attributes:
        on_slide_start: ``(plan)`` once the slide is claimed (lock held, plan settled), before any work.
        on_batch: ``(tiles done, tiles in all)`` each time a parent's rows are written.
        on_slide_end: ``(result)`` when the slide ends, whatever the outcome (a failure: ``failed``).
        cancelled: polled between batches and right before publishing; ``True`` stops the slide
            (:class:`SlideCancelled`, nothing published).
    """

    on_slide_start: Callable[[SlidePlan], None] | None = None
    on_batch: Callable[[int, int], None] | None = None
    on_slide_end: Callable[[SlideResult], None] | None = None
    cancelled: Callable[[], bool] | None = None


class TileBar:
    """A tqdm bar of one slide's tiles at a time, driven by :class:`SlideHooks` (``hooks()``)."""

    def __init__(self, position: int = 1) -> None:
        self.position = position
        self.desc = ""
        self.bar: Any = None

    def hooks(self) -> SlideHooks:
        return SlideHooks(on_slide_start=self.start, on_batch=self.batch, on_slide_end=self.end)

    def start(self, plan: SlidePlan) -> None:
        self.desc = plan.slide_id

    def batch(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="tile", leave=False, position=self.position)
        self.bar.update(done - self.bar.n)

    def end(self, result: SlideResult) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def config_clash_error(plans: Sequence[SlidePlan], out_dir: str | Path) -> ConfigMismatchError | None:
    """The one error for a run whose slides have bags of another config (``None``: no clash)."""
    clashes = [f"{p.slide_id} ({p.detail})" for p in plans if p.state == "mismatch"]
    if not clashes:
        return None
    return ConfigMismatchError(
        f"{len(clashes)} slide(s) already have bags in {out_dir} written with a different config: "
        + "; ".join(clashes[:5])
        + (" ..." if len(clashes) > 5 else "")
        + ". Pass overwrite=true to recompute them, or choose another out_dir."
    )


def execute_slide(
    pass_: ExtractionPass,
    spec: SlideSpec,
    out_dir: str | Path,
    *,
    plan: SlidePlan | None = None,
    hooks: SlideHooks | None = None,
    cache: SlideCache | None = None,
) -> SlideResult:
    """Extract one slide of a run: the steps of :class:`SlideExtraction`, a failure of this slide
    (corrupt file, no resolution, bags of another slide, a model error ...) recorded as a ``failed``
    :class:`SlideResult` so that the run goes on. ``KeyboardInterrupt`` and :class:`SlideCancelled`
    end the run. ``cache`` (``cache_dir``): the slide is read from its local copy, removed after."""
    try:
        # cache_dir: the slide's local copy (made now, or by the prefetch of the previous slide)
        local = cache.stage(spec.location) if cache is not None else None
        return SlideExtraction(
            pass_,
            spec.path,
            out_dir,
            mpp=spec.mpp,
            plan=plan,
            hooks=hooks,
            slide_id=spec.name,
            local_copy=local,
        ).run()
    except (KeyboardInterrupt, SlideCancelled, DiskFullError):
        raise  # end the run: a full disk fails every later slide too
    except Exception as err:  # noqa: BLE001 - one bad slide must not stop the others
        # a write refused mid-slide (HDF5's raw error): one line, the run stops
        if is_disk_full(err, out_dir):
            raise disk_full_error(out_dir, what=f"{spec.slide_id}'s bags") from err
        return SlideResult.failure(spec.path, spec.slide_id, err)
    finally:
        if cache is not None:
            cache.release(spec.location)
        # the slide's freed buffers back to the OS: resident memory stays flat over a cohort
        # (benchmarks/cohort.py; glibc keeps them otherwise, and RSS creeps up in steps)
        release_freed_memory()


class SlideExtraction:
    """Extract one slide into ``out_dir`` (the steps of the module header).

    Args:
        pass_: the pass (:class:`~zoomfeat.features.families.ExtractionPass`: config, models, families).
        slide_path: the slide file; out_dir: the output root.
        mpp: the slide's resolution override (``None``: the config's, or the file's).
        plan: the slide's plan when the runner made it already (``None``: made in step 2).
        hooks: observers (:class:`SlideHooks`).
        slide_id: the slide's id when a manifest names it (``None``: the name it is listed under).
        local_copy: the local copy of a remote ``slide_path`` staged in ``cache_dir`` (read instead).
    """

    #: ZoomLDM's magnification indices of the 20x children and the 5x parents
    MAG20, MAG5 = mag_index(BASE_MAG), PARENT_MAG_INDEX

    def __init__(
        self,
        pass_: ExtractionPass,
        slide_path: str | Path,
        out_dir: str | Path,
        *,
        mpp: float | None = None,
        plan: SlidePlan | None = None,
        hooks: SlideHooks | None = None,
        slide_id: str | None = None,
        local_copy: Path | None = None,
    ) -> None:
        self.pass_ = pass_
        self.cfg = pass_.cfg
        self.models = pass_.models
        self.device = pass_.device
        self.slide_path = slide_path
        self.slide_id = slide_id
        self.local_copy = local_copy
        self.mpp = mpp if mpp is not None else self.cfg.mpp
        self.out_dir = out_dir
        self.plan = plan
        self.hooks = hooks or SlideHooks()
        self.result: SlideResult | None = None  # made by step 1
        # model timings (seconds) of this slide, for benchmarks ("uni": every embedding job)
        self.timings = {"uni": 0.0, "zoomldm": 0.0, "wait": 0.0}
        # the state the steps share, set by the step named
        self.slide: Any = None  # 1: the open Slide
        self.write: list[str] = []  # 2: the families to compute and write, in the pass's order
        self.derive: list[str] = []  # 2: the families whose fused file is derived from their bags
        self.recipes: list = []  # 2: the recipes among them
        self.jobs: list[str] = []  # 2: the embedding jobs they need
        self.grid: Any = None  # 3: the TileGrid
        self.n_parents = 0  # 3: kept 5x parents P
        self.kept: np.ndarray = np.zeros((0, CHILDREN), bool)  # 4: bool (P, 16), kept children of each parent
        self.items: dict[int, dict] = {}  # 4: loader items (tiles, noise) of parents in flight
        self.states: dict[int, ParentState] = {}  # 4-7: results of parents in flight
        self.queue_uni: deque[Piece] = deque()  # 4 -> 5: tiles every job embeds (all of them by default)
        # 4 -> 5: one queue per group of jobs embedding the same tiles (plan.work), queue_uni first
        self.embed_queues: dict[tuple[str, ...], deque[Piece]] = {}
        self.slots: dict[int, dict[tuple[str, ...], np.ndarray]] = {}  # 4-5: each queue's tiles of a parent
        self.queue_zoomldm: deque[Piece] = deque()  # 5 -> 6
        self.next_parent = 0  # 7: parents are fused and written strictly in order
        self.rows: RowBuffer | None = None  # 7
        self.tiles_done = 0  # 7: tiles written (on_batch)
        # the tile store (store=DIR; features/store.py): 2: "read" | "write" | ""; 3: its reader / writer
        self.store_use = ""
        self.store_in: StoreReader | None = None
        self.store_out: StoreWriter | None = None
        self.readers: ParentReaders | None = None  # the pass's reader processes (start_readers)
        self.latents: dict[int, dict[str, np.ndarray]] = {}  # 6-7 (store written): z0 of parents in flight
        self.tiles_total = 0  # 3

    def run(self) -> SlideResult:
        """Steps 1 to 8; returns the :class:`SlideResult` (``done``, ``skipped`` or ``locked``);
        raises on a failure (after ``on_slide_end`` saw it as ``failed``)."""
        t0 = time.perf_counter()
        try:
            self.readers = self.start_readers()
            self.open_slide()  # 1
            lock = SlideLock(self.out_dir, self.slide.slide_id)
            try:
                if self.claim(lock):  # 2
                    assert self.plan is not None
                    only_bags = self.plan.from_bags_only  # the plan's decision: nothing read of the slide
                    with self.bags_writer() if only_bags else self.lay_grid() as writer:  # 3
                        self.check_free_space()  # the slide's bytes must fit before any is computed
                        writer.reserve()  # a disk filled from now on fails here, not inside HDF5
                        if self.n_parents and (self.write or self.store_out is not None):
                            self.stream(writer)  # 4-7
                        self.derive_from_bags(writer)  # 8
                        self.publish(writer)  # 9
            finally:
                lock.release()
                self.slide.close()
                if self.store_out is not None:
                    self.store_out.discard()  # a published entry has nothing left to discard
                if self.store_in is not None:
                    self.store_in.close()
        except BaseException as err:
            if self.hooks.on_slide_end is not None:
                from zoomfeat.slide.naming import slide_id_from_path

                sid = (
                    self.slide.slide_id
                    if self.slide is not None
                    else self.slide_id or slide_id_from_path(self.slide_path)
                )
                self.hooks.on_slide_end(SlideResult.failure(self.slide_path, sid, err))
            raise
        assert self.result is not None
        if self.result.status == "done":
            self.result.seconds = time.perf_counter() - t0
            self.result.timings = dict(self.timings)
        if self.hooks.on_slide_end is not None:
            self.hooks.on_slide_end(self.result)
        return self.result

    # ---------------------------------------------------------------- 1. open the slide
    def open_slide(self) -> None:
        from zoomfeat.slide import Slide

        cfg = self.cfg
        self.slide = Slide.open(
            self.local_copy or self.slide_path,
            mpp=self.mpp,
            reader=cfg.reader,
            slide_id=self.slide_id,
            storage_options=cfg.storage_options,
            origin=str(self.slide_path) if self.local_copy is not None else None,
        )
        self.result = SlideResult(str(self.slide_path), self.slide.slide_id, "done")

    # ---------------------------------------------------------------- 2. plan, lock
    def claim(self, lock: SlideLock) -> bool:
        """Whether this process extracts the slide (False: ``skipped`` or ``locked``, in the result);
        settles the plan and sets the families, recipes and embedding jobs to compute.

        Complete families with this very config and slide are always reused (delete them to force
        a recomputation); families from another config raise unless ``overwrite=true`` (then only
        they are replaced); outputs of another slide file under the same slide id always raise
        (:class:`SlideIdentityError`); damaged families are reported and recomputed.
        """
        assert self.result is not None
        sid = self.slide.slide_id
        ensure_dir(self.out_dir)  # an OutputError naming it when it cannot be written
        plan = self.plan
        if (
            plan is None
            or plan.slide_id != sid
            or Path(plan.out_dir) != Path(self.out_dir)
            or not plan.still_current()  # made up front: the outputs may have changed since (a stat each)
        ):
            plan = self.pass_.plan(self.out_dir, sid, source=str(self.slide_path))
        identity = self.slide.identity()
        self.check(plan, identity, warn=True)
        if plan.complete and not store_only(plan):
            self.result.status, self.result.paths = "skipped", plan.paths()
            return False
        if not lock.acquire():
            self.result.status = "locked"
            return False
        if not plan.still_current():  # another process may have written it while we were getting here
            plan = self.pass_.plan(self.out_dir, sid, source=str(self.slide_path))
            self.check(plan, identity, warn=False)
            if plan.complete and not store_only(plan):
                self.result.status, self.result.paths = "skipped", plan.paths()
                return False
        self.plan = plan
        # a slide changed while it was read publishes nothing (zoomfeat.slide.identity)
        plan.before_publish.append(self.slide.check_unchanged)
        remove_stale_temporaries(plan.paths())
        self.write = plan.to_compute()  # the fused files derived from the bags need no model
        self.derive = plan.from_bags()
        self.result.written = plan.to_write()
        self.result.derived = list(self.derive)
        self.result.reused = plan.reused()
        if plan.store is not None:  # the tile store: refuse another slide's entry, warn about damage
            self.store_use = self.result.store = check_store(
                plan.store, identity, overwrite=self.cfg.overwrite, warn=True
            )
            # an entry to write (another slide's, with overwrite) has everything computed
            plan.work = self.pass_.work(plan)
        m, work = self.models, plan.work
        self.recipes = [r for r in m.recipes if r.name in self.write]
        self.jobs = [j for j in m.jobs if j in work.jobs]  # the plan's work: each job on its tiles only
        groups: dict[tuple[bool, bool, bool], list[str]] = {}
        for j in self.jobs:
            groups.setdefault(work.tiles(j), []).append(j)
        self.embed_queues = {}
        for k, jobs in enumerate(groups.values()):
            self.embed_queues[tuple(jobs)] = self.queue_uni if k == 0 else deque()
        if self.hooks.on_slide_start is not None:
            self.hooks.on_slide_start(plan)
        return True

    def check(self, plan: SlidePlan, identity: dict[str, Any], *, warn: bool) -> None:
        """Refuse outputs of another slide (always) or config (unless ``overwrite``); warn (with
        ``warn``) about damaged files, whose families the plan recomputes.

        Raises:
            SlideIdentityError: existing outputs came from another slide with this slide id.
            ConfigMismatchError: bags from another config exist (unless ``overwrite``).
        """
        sid, out_dir = plan.slide_id, self.out_dir
        clash = plan.identity_clash(identity)
        if clash is not None:
            old_path, why = clash
            raise SlideIdentityError(
                f"slide id '{sid}': the outputs in {out_dir} came from {old_path}, but {identity['path']} "
                f"is a different slide with the same file name ({why}); not reusing or overwriting them: "
                "rename one of the two files (the slide id is the file name), use another out_dir, or delete "
                f"the old outputs ({out_dir}/*/*/{sid}.h5 and {sid}_patches.h5) if the slide was "
                "replaced on purpose"
            )
        if plan.state == "mismatch" and not self.cfg.overwrite:
            raise ConfigMismatchError(
                f"bags for slide '{sid}' in {out_dir} were written with a different config ({plan.detail}); "
                "refusing to mix them: pass overwrite=true to recompute those bags, or use another out_dir"
            )
        damaged = plan.damage()
        if damaged and warn:
            warnings.warn(
                f"{sid}: damaged output file(s), recomputing them: {'; '.join(damaged)}",
                DamagedOutputWarning,
                stacklevel=2,
            )

    # ---------------------------------------------------------------- 3. tissue, grid, writer
    def lay_grid(self) -> SlideBagWriter:
        """Build the tile grid and return the slide's open :class:`SlideBagWriter` (a context manager)
        for the families (and coords files) to write."""
        from zoomfeat.slide import TileGrid

        cfg, slide = self.cfg, self.slide
        if self.store_use == "read":  # the grid of the tile store: no tissue detection, no pixel read
            assert self.plan is not None and self.plan.store is not None
            self.store_in = StoreReader(self.plan.store.entry)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grid = (
                StoredGrid.read(self.store_in)
                if self.store_in is not None
                else TileGrid.build(
                    slide,
                    tile_px=cfg.tile_px,
                    mag=BASE_MAG,
                    parent_mag=magnification(PARENT_MAG_INDEX),
                    min_tissue=cfg.tissue.min_tissue,
                    progress=False,
                    lattice="trident" if cfg.trident_compat else "integer",  # issue 10: coords multiples of p
                )
            )
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.grid = grid
        kept = grid.children.kept
        self.n_parents = P = len(grid.parents)
        assert self.result is not None
        self.result.n20, self.result.n5 = int(kept.sum()), P
        if P == 0:
            warnings.warn(f"{slide.path}: no tissue tiles; writing empty (0, D) bags", stacklevel=4)
        xp, plan = self.pass_, self.plan
        assert plan is not None and self.result is not None
        self.tiles_total = int(kept.sum()) + P
        writer = self.open_bag_writer(
            coords=PerMag(x20=grid.children.xy[kept], x5=grid.parents),
            coords_attrs=PerMag(x20=grid.coords_attrs(slide, "child"), x5=grid.coords_attrs(slide, "parent")),
            parent_idx=grid.children.parent[kept],
        )
        if self.store_use in ("write", "fill"):  # fill: the bags are complete, only the entry is written
            self.store_out = open_writer(xp, slide, grid)
        return writer

    def bags_writer(self) -> SlideBagWriter:
        """Step 3 of a slide whose run only derives fused files from bags on disk
        (:attr:`~zoomfeat.features.families.SlidePlan.from_bags_only`): the writer takes the tiles
        stored in the first such family's 20x and 5x bags; no tissue detection, no tile grid, no
        pixel read (0 tiles in the result)."""
        assert self.plan is not None and self.result is not None
        paths = self.plan.paths()
        s20, s5, _ = self.pass_.families[self.derive[0]].sets
        coords, coords_attrs, parent_idx = bag_layout(PerMag(x20=paths[s20], x5=paths[s5]))
        self.result.n20 = self.result.n5 = 0
        return self.open_bag_writer(coords=coords, coords_attrs=coords_attrs, parent_idx=parent_idx)

    def open_bag_writer(
        self, *, coords: PerMag[np.ndarray], coords_attrs: PerMag[Any], parent_idx: np.ndarray
    ) -> SlideBagWriter:
        """The slide's :class:`SlideBagWriter` of every set the plan writes (computed or derived
        from the bags), on these tiles; the plan's ``expected_bytes`` (free-space check) set."""
        cfg, xp, plan, slide = self.cfg, self.pass_, self.plan, self.slide
        assert plan is not None
        dims, per_set = sets_to_write([xp.families[f] for f in plan.to_write()], cfg, self.models)
        files = {s for sets in plan.sets_to_write().values() for s in sets}  # bags.sets, bags.fused
        dims = {s: d for s, d in dims.items() if s in files}
        writer = SlideBagWriter(
            self.out_dir,
            slide.slide_id,
            dims=dims,
            coords=coords,
            coords_attrs=coords_attrs,
            parent_idx=parent_idx,
            attrs=bag_attrs(slide, cfg=cfg, device=self.device),
            set_attrs=per_set,
            tile_px=cfg.tile_px,
            write_coords=plan.coords_to_write(),
            patches_attrs={"grid_hash": xp.grid_hash, "grid": canonical_json(xp.grid)},
            dtype=cfg.bags.dtype,
        )
        plan.expected_bytes = writer.expected_bytes
        return writer

    def start_readers(self) -> ParentReaders | None:
        """The pass's reader processes (``num_workers``), running: started (or started again) now,
        before anything of this slide is open, since a process forked later would keep copies of
        the slide's lock and its open bags. None without workers or when the plan computes nothing."""
        workers = self.cfg.workers_for(self.device.type)
        plan = self.plan
        if not workers or (
            plan is not None and plan.store is None and (plan.complete or plan.from_bags_only)
        ):
            return None
        return self.pass_.parent_readers(workers, pin_memory=self.device.type == "cuda")

    # ---------------------------------------------------------------- 4-7. the stream
    def stream(self, writer: SlideBagWriter) -> None:
        """Read parents (4) and run both model stages (5, 6) as their queues fill; fuse and write
        complete parents in order (7)."""
        cfg, dev = self.cfg, self.device
        self.kept = self.grid.children.kept.reshape(self.n_parents, CHILDREN)
        self.rows = RowBuffer(writer, sets=list(writer.rows_written))  # the sets of bags.sets to write
        # every draw a pass's recipe may use; draw j is the same whatever the count (a prefix)
        draws = self.models.max_draws if self.recipes else 0
        noise = NoiseSpec(cfg.seed, self.slide.slide_id, self.models.latent_shape, draws)
        assert self.plan is not None
        regions = (
            StoreParents(self.store_in, self.grid, noise, jobs=self.jobs, latents=bool(self.recipes))
            if self.store_in is not None
            else ParentRegions(self.slide, self.grid, noise, parent_tile=self.plan.work.parent_tile)
        )
        # reader processes: the pass's, running since the slide started (a store's parents: a loader)
        it = (
            self.readers.parents(regions)
            if self.readers is not None and isinstance(regions, ParentRegions)
            else iter(parent_loader(regions, cfg.workers_for(dev.type), pin_memory=dev.type == "cuda"))
        )
        try:
            self.stream_parents(it)
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # a slide stopped part-way ends the readers' work on it
                close()

    def stream_parents(self, it: Iterator[dict]) -> None:
        """Steps 4-7 over the parents ``it`` yields in order."""
        cfg, P, rows = self.cfg, self.n_parents, self.rows
        assert rows is not None  # stream() made it
        bs = cfg.batch_size
        while True:
            self.check_cancelled()
            t = time.perf_counter()
            batch = next(it, None)
            self.timings["wait"] += time.perf_counter() - t
            if batch is not None:
                self.read_parents(batch)
            # full batches while there are enough tiles; everything left once input ends
            for jobs, queue in self.embed_queues.items():
                while queued(queue) >= bs or (batch is None and queue):
                    self.run_encoders(take(queue, bs), jobs)
            while queued(self.queue_zoomldm) >= bs or (batch is None and self.queue_zoomldm):
                self.run_zoomldm(take(self.queue_zoomldm, bs))
            if batch is None:
                break
        rows.flush()
        if self.states or self.next_parent != P:
            raise RuntimeError(f"{self.slide.path}: internal error, {len(self.states)} parent(s) unfinished")

    def check_cancelled(self) -> None:
        """Stop the slide (:class:`SlideCancelled`) when the ``cancelled`` hook says so."""
        if self.hooks.cancelled is not None and self.hooks.cancelled():
            raise SlideCancelled(f"{self.slide.slide_id}: cancelled; nothing of this slide was published")

    # ---------------------------------------------------------------- 4. parents in
    def read_parents(self, batch: dict) -> None:
        """Take one parent from the loader: of its 17 tiles, those each group of jobs embeds
        (``plan.work``) join that group's encoder queue."""
        if "emb" in batch:  # from the tile store: embeddings and latents, no pixels
            self.read_stored_parent(batch)
            return
        dev = self.device
        i = int(batch["index"])
        item = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        self.items[i] = item
        emb = {job: torch.empty((CHILDREN + 1, self.models.job_dim(job)), device=dev) for job in self.jobs}
        assert self.plan is not None
        work = self.plan.work
        tiles = torch.cat([item["children"], item["parent"][None]])
        self.slots[i], n_need = {}, 0
        for jobs, queue in self.embed_queues.items():
            slots = work.slots(jobs[0], self.kept[i])
            self.slots[i][jobs], n_need = slots, n_need + len(slots)
            if len(slots) == CHILDREN + 1:
                queue.append(Piece(i, 0, tiles))
            elif len(slots):
                queue.append(Piece(i, 0, tiles[torch.as_tensor(slots, device=tiles.device)]))
        self.states[i] = ParentState(int(self.kept[i].sum()), emb, n_need=n_need,
                                     need20=work.zoomldm_20x, need5=work.zoomldm_5x)  # fmt: skip
        if n_need == 0:  # nothing to embed of this parent (no job at all)
            self.parent_embedded(i)
            self.fuse_complete()

    def read_stored_parent(self, batch: dict) -> None:
        """Take one parent from the tile store (:class:`~zoomfeat.features.store.StoreParents`): its
        embeddings are all in (every job, all 17 tiles), so it goes straight on to ZoomLDM."""
        dev, i = self.device, int(batch["index"])
        self.items[i] = {k: v.to(dev, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        emb = {job: batch["emb"][job].to(dev) for job in self.jobs}
        assert self.plan is not None
        work = self.plan.work
        self.states[i] = ParentState(int(self.kept[i].sum()), emb, n_emb=CHILDREN + 1,
                                     need20=work.zoomldm_20x, need5=work.zoomldm_5x)  # fmt: skip
        self.parent_embedded(i)
        self.fuse_complete()

    @property
    def runs_zoomldm(self) -> bool:
        """Whether parents go through the ZoomLDM stage: a recipe to write, or latents for the store."""
        out = self.store_out
        return bool(self.recipes) or (out is not None and out.latent_shape is not None)

    # ---------------------------------------------------------------- 5. encoders
    def run_encoders(self, pieces: list[Piece], jobs: Sequence[str] | None = None) -> None:
        """One batch through the embedding ``jobs`` of its queue (None: every job); parents whose
        embeddings are all in go to the ZoomLDM queue (or, with no recipe to write, straight to step 7)."""
        jobs = tuple(self.jobs if jobs is None else jobs)
        t = time.perf_counter()
        images = torch.cat([p.images for p in pieces])
        emb = {job: self.models.embed(images, job) for job in jobs}
        synchronize(self.device)
        self.timings["uni"] += time.perf_counter() - t
        pos = 0
        for p in pieces:
            st = self.states[p.parent]
            slots = self.slots[p.parent].get(jobs, np.arange(CHILDREN + 1))[p.start : p.start + len(p)]
            at = torch.as_tensor(slots, device=self.device)
            for job, e in emb.items():
                st.emb[job][at] = e[pos : pos + len(p)]
            st.n_emb += len(p)
            pos += len(p)
            if st.n_emb == st.n_need:
                self.parent_embedded(p.parent)
        self.fuse_complete()

    def parent_embedded(self, i: int) -> None:
        """Parent ``i``'s embeddings are all in: on to ZoomLDM, or (no recipe to write) to step 7."""
        self.slots.pop(i, None)
        if self.runs_zoomldm:
            self.queue_parent_for_zoomldm(i)
        else:
            self.items.pop(i)

    def queue_parent_for_zoomldm(self, i: int) -> None:
        """Kept children with their own 1x1 grid (20x), and the parent tile with the 4x4 grid of its
        children (5x), join the ZoomLDM queue; one grid per conditioning size of the recipes."""
        dev, side = self.device, CHILDREN_PER_SIDE
        st, item = self.states[i], self.items.pop(i)
        pxs = dict.fromkeys(r.cond_px for r in self.recipes)
        emb = {px: st.emb[self.models.cond_job(px)] for px in pxs}
        rows_i = np.flatnonzero(self.kept[i])
        if len(rows_i) and st.need20:  # the plan's work: 20x rows of a recipe are written
            sel = torch.as_tensor(rows_i, device=dev)
            g20 = {px: e[sel][:, :, None, None] for px, e in emb.items()}
            z20 = item["z20"] if "z20" in item else item["children"][sel]  # the store's latents, or the tiles
            self.queue_zoomldm.append(Piece(i, 0, z20, self.MAG20, g20, item["noise20"]))
        if st.need5:  # 5x rows of a recipe: the grid of all 16 children (background ones embedded too)
            g5 = {px: e[:CHILDREN].reshape(side, side, -1).permute(2, 0, 1)[None] for px, e in emb.items()}
            z5 = item["z5"] if "z5" in item else item["parent"]
            self.queue_zoomldm.append(Piece(i, -1, z5[None], self.MAG5, g5, item["noise5"][None]))

    # ---------------------------------------------------------------- 6. ZoomLDM
    def run_zoomldm(self, pieces: list[Piece]) -> None:
        """One ZoomLDM batch (every recipe to write); then every complete parent, in order, is
        fused and written."""
        t = time.perf_counter()
        mags = [p.mag for p in pieces]
        grids = [p.grids or {} for p in pieces]  # every ZoomLDM piece has its grids and noise
        ctx = {px: self.models.contexts([g[px] for g in grids], mags) for px in grids[0]}
        x = torch.cat([p.images for p in pieces])
        # the latents: read from the tile store, else z0 = VQ.encode(tiles) (kept when writing the store)
        z0 = x if self.store_in is not None else self.models.encode_tiles(x)
        if self.store_out is not None:
            self.keep_latents(pieces, z0)
        feats = self.models.latent_features(
            z0, ctx, torch.cat([p.noise for p in pieces if p.noise is not None]), recipes=self.recipes
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

    def keep_latents(self, pieces: list[Piece], z0: torch.Tensor) -> None:
        """Keep the latents of a ZoomLDM batch's tiles for the tile store, parent by parent."""
        pos, shape = 0, tuple(z0.shape[1:])
        for p in pieces:
            z = z0[pos : pos + len(p)].cpu().numpy()
            pos += len(p)
            n_kept = self.states[p.parent].n_kept
            kept = self.latents.setdefault(p.parent, {"z20": np.zeros((n_kept, *shape), np.float32)})
            if p.start < 0:
                kept["z5"] = z[0]
            else:
                kept["z20"][p.start : p.start + len(p)] = z

    def fuse_complete(self) -> None:
        """Fuse and write every complete parent at the front of the order (step 7)."""
        while self.next_parent in self.states and self.states[self.next_parent].complete(self.runs_zoomldm):
            self.fuse_parent(self.next_parent)
            self.next_parent += 1

    # ---------------------------------------------------------------- 7. fuse + write rows
    def fuse_parent(self, i: int) -> None:
        """Parent ``i``'s rows of every family to write (fused: each child next to its parent) to the buffer."""
        st = self.states.pop(i)
        kept = self.kept[i]
        if self.store_out is not None:  # the tile store's rows of this parent (every job, all 17 tiles)
            z = self.latents.pop(i, {})
            self.store_out.add_parent(i, emb={j: e.cpu().numpy() for j, e in st.emb.items()},
                                      z20=z.get("z20"), z5=z.get("z5"))  # fmt: skip
        assert self.plan is not None
        work = self.plan.work
        rows: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
        for name in self.write:  # only the parts the plan's work computed (RowBuffer takes the sets written)
            if name in st.emb:  # an encoder family: its job has the family's name
                e = st.emb[name].cpu().numpy()
                k, _, p = work.tiles(name)
                rows[name] = (e[:CHILDREN][kept] if k else None, e[CHILDREN] if p else None)
            else:
                d = self.models.dims[f"{name}_20x"]
                f20 = None
                if st.need20:
                    f20 = st.f20[name].cpu().numpy() if st.n_kept else np.zeros((0, d), np.float32)
                f5 = st.f5[name].cpu().numpy() if st.f5 is not None else None
                rows[name] = (f20, f5)
        assert self.rows is not None
        self.rows.add(rows)
        self.tiles_done += st.n_kept + 1
        if self.hooks.on_batch is not None:
            self.hooks.on_batch(self.tiles_done, self.tiles_total)

    # ---------------------------------------------------------------- 8. fused files from the bags
    def derive_from_bags(self, writer: SlideBagWriter) -> None:
        """The fused file of every family the plan derives from its bags
        (:attr:`~zoomfeat.features.families.FamilyPlan.from_bags`): rows
        ``concat(f20[i], f5[parent_idx[i]])`` read from the family's 20x and 5x bags, which stay
        untouched (:meth:`~zoomfeat.features.writer.SlideBagWriter.write_fused_from`)."""
        assert self.plan is not None
        paths = self.plan.paths()
        for name in self.derive:
            s20, s5, sf = self.pass_.families[name].sets
            self.check_cancelled()
            writer.write_fused_from(sf, PerMag(x20=paths[s20], x5=paths[s5]))

    # ---------------------------------------------------------------- 9. publish
    def publish(self, writer: SlideBagWriter) -> None:
        """Publish the bags atomically (``paths`` in the result: every family's, reused ones too),
        then the optional preview.

        The one point right before anything is renamed into place: every file is complete under
        its temporary name, then the ``cancelled`` hook and the plan's ``before_publish`` checks
        run (any that raises publishes nothing).
        """
        assert self.plan is not None and self.result is not None
        # a store fill touches nothing in out_dir; fused files from the bags read nothing of the slide
        draw = self.cfg.preview and self.store_use != "fill" and not self.plan.from_bags_only
        preview = self.preview_features(writer) if draw else {}
        # the tile store's entry is published last of the checks, right before the bags
        store = [self.publish_store] if self.store_out is not None else []
        writer.finish(before_publish=[self.check_cancelled, *self.plan.before_publish, *store])
        paths = self.plan.paths()
        if draw:
            from zoomfeat.features.preview import save_preview

            paths["preview"] = save_preview(
                self.slide,
                self.grid,
                Path(self.out_dir) / "previews" / f"{self.slide.slide_id}.png",
                features=preview,
            )
        self.result.paths = paths

    def check_free_space(self) -> None:
        """:class:`~zoomfeat.runtime.disk.DiskFullError` unless the slide's bytes fit (runtime/disk.py):
        its bags (``plan.expected_bytes``) in ``out_dir`` and, when the tile store is written, its
        entry (:attr:`~zoomfeat.tilestore.StoreWriter.expected_bytes`) in the store dir; counted
        together when both are on one file system."""
        sid, out = self.slide.slide_id, self.store_out
        need = self.plan.expected_bytes if self.plan is not None else 0
        if out is None:
            check_free_space(self.out_dir, need, what=f"{sid}'s bags")
        elif os.stat(self.out_dir).st_dev == os.stat(out.store).st_dev:
            check_free_space(self.out_dir, need + out.expected_bytes, what=f"{sid}'s bags and tile-store entry",
                             instead="another out_dir or store dir")  # fmt: skip
        else:
            check_free_space(self.out_dir, need, what=f"{sid}'s bags")
            check_free_space(out.store, out.expected_bytes, what=f"{sid}'s tile-store entry",
                             instead="another store dir")  # fmt: skip

    def publish_store(self) -> None:
        """Publish the slide's tile-store entry (:meth:`~zoomfeat.tilestore.StoreWriter.finish`)."""
        assert self.store_out is not None
        self.store_out.finish()

    def preview_features(self, writer: SlideBagWriter) -> dict[str, np.ndarray]:
        """The 20x features the preview paints: ``zoomldm_20x`` and ``uni_20x`` when the pass has
        them, read back from the open temporary files (written now) or from the kept bags."""
        from zoomfeat.bags import open_bag

        assert self.plan is not None
        out: dict[str, np.ndarray] = {}
        paths = self.plan.paths()
        for name in ("zoomldm_20x", "uni_20x"):
            if name in writer.rows_written:
                out[name] = writer.read_back(name)
            elif name in paths and paths[name].is_file():
                out[name] = open_bag(paths[name]).features
        return out
