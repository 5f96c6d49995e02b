"""Tile reading speed: parent-region reads/s and tiles/s (17 tiles per region: 16 at 20x + 1 at 5x).

Writes a synthetic 40x pyramid (Aperio-style, JPEG tiles, 4 levels) into a temporary directory,
builds the nested grid and reads every kept parent region (1024x1024 at 20x) plus its split into
16 children and the 5x tile, in one process and through the extraction's own loader
(``zoomfeat.features.data.parent_loader``: DataLoader workers that read, decode, split and draw
the per-tile noise; pinned memory when CUDA is present) with each worker count of ``--workers``:
the tiles/s the readers alone can feed a GPU with.

Two slides are measured from the same pixels: 0.25 um/px (20x regions come from pyramid level 1
as a plain crop) and 0.2627 um/px (a scanner whose "40x" is not exactly 0.25: every region is
resampled with the Lanczos filter).

    python benchmarks/read_tiles.py                       # 16384 x 16384 px, 2 workers
    python benchmarks/read_tiles.py --size 8192 --workers 1,2,4,8,16 --max-regions 100
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoomfeat.slide import Slide, TileGrid, split_parent  # noqa: E402
from zoomfeat.slide.synthetic import synthetic_he_image, write_synthetic_slide  # noqa: E402


def make_image(size: int, block: int = 4096) -> np.ndarray:
    """A size x size H&E-like picture, tiled from one synthetic block (decode cost is what counts)."""
    b = synthetic_he_image(min(block, size), min(block, size), seed=0, tissue_fraction=0.45)
    reps = -(-size // b.shape[0])
    return np.ascontiguousarray(np.tile(b, (reps, reps, 1))[:size, :size])


def bench_single(slide: Slide, grid: TileGrid, indices: list[int]) -> dict[str, float]:
    t0 = time.perf_counter()
    for i in indices:
        grid.read_parent(slide, i)
    t_read = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in indices:
        split_parent(grid.read_parent(slide, i))
    t_all, c_all = time.perf_counter() - t0, time.process_time() - c0
    n = len(indices)
    return {
        "read_regions_s": n / t_read,
        "regions_s": n / t_all,
        "tiles_s": 17 * n / t_all,
        "cpu_ms": 1000 * c_all / n,
    }


def bench_loader(slide: Slide, grid: TileGrid, indices: list[int], workers: int) -> dict[str, float]:
    """The extraction's loader over ``indices`` (parents), noise for the full-size latent included."""
    import torch

    from zoomfeat.features.data import NoiseSpec, ParentRegions, parent_loader

    ds = torch.utils.data.Subset(
        ParentRegions(slide, grid, NoiseSpec(0, slide.slide_id, (3, 64, 64))), indices
    )
    loader = parent_loader(ds, num_workers=workers, pin_memory=torch.cuda.is_available())
    t0 = time.perf_counter()
    n = 0
    t_first = None
    for _item in loader:
        n += 1
        if t_first is None:
            t_first = time.perf_counter()
            n_first = n
    t_end = time.perf_counter()
    # after the first item, later ones may already be prefetched: only meaningful on long runs
    steady = (n - n_first) / (t_end - t_first) if n - n_first >= 8 * max(1, workers) else float("nan")
    return {
        "regions_s": n / (t_end - t0),
        "tiles_s": 17 * n / (t_end - t0),
        "steady_regions_s": steady,
        "startup_s": t_first - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384, help="level-0 width = height in px (default 16384)")
    ap.add_argument("--workers", default="2", help="comma-separated DataLoader worker counts (default 2)")
    ap.add_argument("--max-regions", type=int, default=0, help="read at most this many parents (0: all kept)")
    ap.add_argument("--dir", default=None, help="where to write the slides (default: a temporary directory)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {os.cpu_count()} CPU(s), load average {load:.1f} (wall-clock figures drop when the machine is "
        f"shared; CPU ms per region does not), torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        image = make_image(args.size)
        print(f"synthetic image {args.size}x{args.size} px: {time.perf_counter() - t0:.1f} s")
        for mpp in (0.25, 0.2627):
            t0 = time.perf_counter()
            path = write_synthetic_slide(Path(tmp) / f"bench_{mpp:g}.svs", image=image, mpp=mpp, levels=4)
            t_write = time.perf_counter() - t0
            slide = Slide.open(path)
            t0 = time.perf_counter()
            grid = TileGrid.build(slide, progress=False)
            t_grid = time.perf_counter() - t0
            indices = list(range(len(grid.parents)))
            if args.max_regions:
                indices = indices[: args.max_regions]
            print(
                f"\nslide {path.name}: {slide.magnification:.2f}x, {slide.level_count} levels, "
                f"{path.stat().st_size / 2**20:.0f} MiB (written in {t_write:.1f} s); grid in {t_grid:.2f} s: "
                f"{len(grid.parents)} parents, {grid.n_kept_children} kept children; reading {len(indices)} regions "
                f"of {4 * grid.tile_px} px ({grid.parent_size_level0:.1f} level-0 px)"
            )
            single = bench_single(slide, grid, indices)
            print(
                f"  single process     : {single['read_regions_s']:7.1f} region reads/s (read only); "
                f"{single['regions_s']:7.1f} regions/s = {single['tiles_s']:7.1f} tiles/s (read + split into 17); "
                f"CPU {single['cpu_ms']:.0f} ms per region (= {1000 / single['cpu_ms']:.1f} regions/s per free core)"
            )
            for w in (int(x) for x in str(args.workers).split(",")):
                loader = bench_loader(slide, grid, indices, w)
                print(
                    f"  loader {w:2d} workers   : {loader['regions_s']:7.1f} regions/s = {loader['tiles_s']:7.1f} tiles/s "
                    f"(incl. {loader['startup_s']:.2f} s to the first region; steady {loader['steady_regions_s']:.1f} "
                    f"regions/s = {17 * loader['steady_regions_s']:.1f} tiles/s)",
                    flush=True,
                )
            slide.close()


if __name__ == "__main__":
    main()
