"""Reading a slide's parent regions in DataLoader workers.

One item is one kept 5x parent: its 1024x1024 region at 20x is read once (openslide, in a
worker process), split into the 16 children and the 4x-downsampled parent tile, and the
per-tile diffusion noise of its kept children and of the parent tile is drawn there too, so
reading, decoding, resampling and noise generation all overlap with model compute.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zoomfeat.features.noise import tile_noise
from zoomfeat.runtime.heap import release_freed_memory
from zoomfeat.runtime.stopping import ignore_stop_signals
from zoomfeat.runtime.units import CHILDREN_PER_SIDE
from zoomfeat.slide import Slide, TileGrid, split_parent

#: 20x children per 5x parent (4 x 4)
CHILDREN = CHILDREN_PER_SIDE**2


@dataclass(frozen=True)
class NoiseSpec:
    """What the per-tile noise depends on (besides the tile's own magnification and x, y).

    ``draws``: the largest ensemble of the pass's recipes (draw j is the j-th block of the tile's
    stream whatever the count); 0 with no recipe to compute.
    """

    seed: int
    slide_id: str
    latent_shape: tuple[int, int, int]
    draws: int = 1


class ParentRegions(Dataset):
    """Dataset over the kept parents of ``grid``: item ``i`` is a dict with

    - ``index``: i;
    - ``children``: uint8 (16, t, t, 3), all 16 children (row-major dy, dx), background too;
    - ``parent``: uint8 (t, t, 3), the parent tile at 5x;
    - ``noise20``: float32 (n_kept_i, draws, *latent_shape) for the kept children, in row order;
    - ``noise5``: float32 (draws, *latent_shape) for the parent tile.

    The slide is picklable (path + MPP, handle reopened lazily in each worker).
    """

    def __init__(self, slide: Slide, grid: TileGrid, noise: NoiseSpec, *, parent_tile: bool = True) -> None:
        self.slide = slide
        self.grid = grid
        self.noise = noise
        self.parent_tile = parent_tile  # False: the run uses no 5x tile (a white one, not downsampled)
        self.kept = grid.children.kept.reshape(-1, CHILDREN)

    def __len__(self) -> int:
        return len(self.grid.parents)

    def request(self, i: int) -> ParentRequest:
        """What reading parent ``i`` needs (:class:`ParentRequest`), taken from the grid."""
        x, y, _ = self.grid.parent_box_level0(i)
        child_rows = np.flatnonzero(self.kept[i]) + i * CHILDREN
        return ParentRequest(
            index=i,
            x0=x,
            y0=y,
            mpp=self.grid.target_mpp,
            tile_px=self.grid.tile_px,
            child_xy=self.grid.children.xy[child_rows],
            parent_xy=self.grid.parents[i],
            mag=self.grid.mag,
            parent_mag=self.grid.parent_mag,
            noise=self.noise,
            parent_tile=self.parent_tile,
        )

    def __getitem__(self, i: int) -> dict:
        return read_parent(self.slide, self.request(i))


@dataclass(frozen=True)
class ParentRequest:
    """Everything reading one kept parent needs besides the slide: a few hundred bytes (the slide
    about 1.5 KB more), so a request travels to a reader process cheaply (the grid, with its
    tissue mask, stays here).

    ``(x0, y0)``: the parent region's exact level-0 top-left; ``mpp``: the 20x tiles' um/px
    (``TileGrid.target_mpp``); ``child_xy``: int64 (n, 2) level-0 xy of its kept children in row
    order; ``parent_xy``: int64 (2,) the parent's level-0 xy (the noise of a tile depends on its
    magnification and xy only).
    """

    index: int
    x0: float
    y0: float
    mpp: float
    tile_px: int
    child_xy: np.ndarray
    parent_xy: np.ndarray
    mag: float
    parent_mag: float
    noise: NoiseSpec
    parent_tile: bool = True


def read_parent(slide: Slide, request: ParentRequest) -> dict:
    """One item of :class:`ParentRegions`: parent ``request.index``'s 4t x 4t region at the 20x
    MPP (:meth:`Slide.read_region`, as :meth:`TileGrid.read_parent` reads it), split into its 16
    children and the 4x-downsampled parent tile (:func:`split_parent`), and the noise of its kept
    children and of the parent tile."""
    region = slide.read_region(request.x0, request.y0, CHILDREN_PER_SIDE * request.tile_px, request.mpp)
    children, parent = split_parent(region, parent_tile=request.parent_tile)
    ns = request.noise
    xy = request.child_xy
    if ns.draws == 0:  # no recipe to compute (encoder families only): no noise
        noise20 = torch.zeros((len(xy), 0, *ns.latent_shape))
    elif len(xy):
        noise20 = torch.stack(
            [
                tile_noise(ns.seed, ns.slide_id, request.mag, xy[k, 0], xy[k, 1], ns.latent_shape, ns.draws)
                for k in range(len(xy))
            ]
        )
    else:
        noise20 = torch.zeros((0, ns.draws, *ns.latent_shape))
    px, py = request.parent_xy
    noise5 = (
        tile_noise(ns.seed, ns.slide_id, request.parent_mag, px, py, ns.latent_shape, ns.draws)
        if ns.draws
        else torch.zeros((0, *ns.latent_shape))
    )
    return {
        "index": request.index,
        "children": torch.from_numpy(children),
        "parent": torch.from_numpy(parent),  # split_parent returns a fresh uint8 array
        "noise20": noise20,
        "noise5": noise5,
    }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    # SIGTERM / Ctrl-C reach the loader's workers too; the extraction cancels its slide and ends them
    ignore_stop_signals()


def worker_context():
    """``fork`` on Linux (cheap, and the workers never touch CUDA), ``spawn`` elsewhere.

    Named explicitly because the default context is not always usable: inside a joblib/loky
    worker (Hydra's joblib launcher) it is loky's, which DataLoader workers cannot start from.
    """
    import multiprocessing as mp
    import sys

    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def parent_loader(
    dataset: Dataset, num_workers: int = 0, pin_memory: bool = False, prefetch: int = 4
) -> DataLoader:
    """In-order loader over parents (no batching: the pipeline re-batches tiles itself)."""
    kwargs = {}
    if num_workers > 0:
        kwargs = {
            "prefetch_factor": prefetch,
            "worker_init_fn": _worker_init,
            "persistent_workers": False,
            "multiprocessing_context": worker_context(),
        }
    return DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=pin_memory, **kwargs
    )


class _Feed(Sampler):
    """The requests of the slide being read: the pool's sampler, given a new list for every slide
    (a persistent loader iterates its sampler again on each pass; the list is replaced, never
    changed in place, so an iteration under way keeps its own)."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, Slide, ParentRequest]] = []

    def __iter__(self) -> Iterator[tuple[int, Slide, ParentRequest]]:
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self.requests)


class _Requested(Dataset):
    """A reader process's side of :class:`ParentReaders`: the parent a request names, from the
    request's slide, kept open while the requests carry the same token."""

    def __init__(self) -> None:
        self.token: int | None = None
        self.slide: Slide | None = None

    def __getitem__(self, item: tuple[int, Slide, ParentRequest]) -> dict:
        token, slide, request = item
        if token != self.token:
            if self.slide is not None:
                self.slide.close()
                release_freed_memory()  # the last slide's buffers back to the OS, as the main process does
            self.token, self.slide = token, slide
        assert self.slide is not None
        return read_parent(self.slide, request)


class ParentReaders:
    """``num_workers`` reader processes kept for a whole run: they read the parents of one slide
    after another, so a cohort starts them once, not once per slide (a loader per slide forked
    ``num_workers`` processes for every slide: 0.1 to 0.15 s a slide with 2 of them, more than
    reading a small slide; ``benchmarks/cohort.py extract --side 1024,2048 --set num_workers=2``).

    :meth:`parents` yields a slide's items in order, exactly :class:`ParentRegions`'s (the same
    :func:`read_parent` on the same :class:`ParentRequest`); a request carries the slide (a
    picklable path and MPP) and a token that changes with the slide, so each process opens a
    slide once and closes it when the next one starts. A slide read only in part (an error, a
    stop) ends the processes (:meth:`close`); the next slide starts new ones.

    Start them (:meth:`start`) when nothing they must not keep is open: a forked process holds a
    copy of every file descriptor of the moment, and with it a slide's lock (``flock``) and the
    HDF5 lock of its open bags, after this process closed them. The extraction starts them at the
    start of a slide, before it opens, locks or writes anything.
    """

    def __init__(self, num_workers: int, *, pin_memory: bool = False, prefetch: int = 4) -> None:
        if num_workers < 1:
            raise ValueError(f"ParentReaders needs at least one process, got num_workers={num_workers}")
        self.num_workers, self.pin_memory, self.prefetch = int(num_workers), bool(pin_memory), int(prefetch)
        self._feed = _Feed()
        self._loader: DataLoader | None = None
        self._token = 0

    def matches(self, num_workers: int, *, pin_memory: bool) -> bool:
        return self.num_workers == int(num_workers) and self.pin_memory == bool(pin_memory)

    @property
    def running(self) -> bool:
        return self._loader is not None

    def start(self) -> None:
        """Start the processes now, if they are not running."""
        if self._loader is None:
            self._feed.requests = []
            self._loader = DataLoader(
                _Requested(),
                batch_size=None,
                sampler=self._feed,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch,
                worker_init_fn=_worker_init,
                persistent_workers=True,
                multiprocessing_context=worker_context(),
            )
            for _ in self._loader:  # no request: the processes start and wait
                pass

    def parents(self, regions: ParentRegions) -> Iterator[dict]:
        """``regions``' items in order, read by the pool's processes (started here if they are not
        running: see the class docstring for when not to)."""
        self.start()
        assert self._loader is not None
        self._token += 1
        self._feed.requests = [(self._token, regions.slide, regions.request(i)) for i in range(len(regions))]
        finished = False
        try:
            yield from self._loader
            finished = True
        finally:
            self._feed.requests = []
            if not finished:  # requests of this slide may still be queued: start afresh
                self.close()

    def close(self) -> None:
        """End the processes (also when they were never started)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
            loader._iterator = None  # type: ignore[union-attr]
