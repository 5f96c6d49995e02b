"""Reading a slide's parent regions in DataLoader workers.

One item is one kept 5x parent: its 1024x1024 region at 20x is read once (openslide, in a
worker process), split into the 16 children and the 4x-downsampled parent tile, and the
per-tile diffusion noise of its kept children and of the parent tile is drawn there too, so
reading, decoding, resampling and noise generation all overlap with model compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoomfeat.features.noise import tile_noise
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

    def __init__(self, slide: Slide, grid: TileGrid, noise: NoiseSpec) -> None:
        self.slide = slide
        self.grid = grid
        self.noise = noise
        self.kept = grid.children.kept.reshape(-1, CHILDREN)

    def __len__(self) -> int:
        return len(self.grid.parents)

    def __getitem__(self, i: int) -> dict:
        region = self.grid.read_parent(self.slide, i)
        children, parent = split_parent(region)
        ns = self.noise
        child_rows = np.flatnonzero(self.kept[i]) + i * CHILDREN
        xy = self.grid.children.xy
        if ns.draws == 0:  # no recipe to compute (encoder families only): no noise
            noise20 = torch.zeros((len(child_rows), 0, *ns.latent_shape))
        elif len(child_rows):
            noise20 = torch.stack(
                [
                    tile_noise(
                        ns.seed, ns.slide_id, self.grid.mag, xy[k, 0], xy[k, 1], ns.latent_shape, ns.draws
                    )
                    for k in child_rows
                ]
            )
        else:
            noise20 = torch.zeros((0, ns.draws, *ns.latent_shape))
        px, py = self.grid.parents[i]
        noise5 = (
            tile_noise(ns.seed, ns.slide_id, self.grid.parent_mag, px, py, ns.latent_shape, ns.draws)
            if ns.draws
            else torch.zeros((0, *ns.latent_shape))
        )
        return {
            "index": i,
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
