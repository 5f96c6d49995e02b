"""Tissue detection and the tile grid on a huge single-level ("flat") sparse tiled TIFF.

Writes (once) a ``side x side`` px RGB tiled BigTIFF without a pyramid, 0.5 um/px, JPEG tiles of
``tile`` px, nearly all of them absent (zero byte count: openslide shows them as background) but
for a few blobs of tissue-coloured tiles, then times ``detect_tissue`` + ``TileGrid.build``
(integer lattice, as extraction uses it) in a fresh process and reports its wall seconds and its
peak resident memory (``ru_maxrss``). Example::

    python benchmarks/flat_slide.py --side 1000000 --dir /tmp/flat   # the 10^6 x 10^6 px case
    python benchmarks/flat_slide.py --side 100000 --dir /tmp/flat    # 100x less area

The file is small (the absent tiles cost 16 bytes each in the tile tables: ~15 MB at 10^6 px with
1024 px tiles); the run is one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def tissue_tiles(side: int, tile: int) -> set[tuple[int, int]]:
    """(row, col) of the tissue tiles: three blobs, at 1/3, 1/2 and 3/4 of the slide."""
    n = -(-side // tile)
    blobs = set()
    for fy, fx, h, w in ((1 / 3, 1 / 3, 6, 5), (1 / 2, 2 / 3, 3, 4), (3 / 4, 1 / 4, 4, 4)):
        r0, c0 = int(n * fy), int(n * fx)
        blobs |= {(r0 + a, c0 + b) for a in range(h) for b in range(w)}
    return blobs


def write_slide(path: Path, *, side: int, tile: int, mpp: float = 0.5) -> None:
    """A single-level tiled TIFF: tissue tiles (pink, with texture), one white tile at (0, 0)
    (tifffile takes the dtype from the first tile), every other tile absent."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    pink = np.empty((tile, tile, 3), np.uint8)
    noise = rng.integers(-3, 4, (tile, tile))
    for ch, v in enumerate((200, 120, 170)):
        pink[..., ch] = np.clip(v + noise, 0, 255)
    white = np.full((tile, tile, 3), 245, np.uint8)
    n = -(-side // tile)
    blobs = tissue_tiles(side, tile)

    def tiles():
        for i in range(n):
            for j in range(n):
                yield pink if (i, j) in blobs else (white if i == j == 0 else None)

    tmp = path.with_name(path.name + ".tmp")
    tifffile.imwrite(
        tmp,
        tiles(),
        shape=(side, side, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        bigtiff=True,
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
    )
    os.replace(tmp, path)


def run(path: Path) -> dict:
    """Tissue + grid on ``path`` in this process: seconds and peak RSS (:mod:`_rss`)."""
    from _rss import tissue_grid_figures

    return tissue_grid_figures(path, progress=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1_000_000, help="level-0 side in px")
    ap.add_argument("--tile", type=int, default=1024, help="TIFF tile side in px")
    ap.add_argument("--dir", type=Path, default=Path("flat_slide_bench"), help="where the TIFF is written")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.child)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"flat_{args.side}_{args.tile}.tif"
    if not path.is_file():
        t0 = time.perf_counter()
        write_slide(path, side=args.side, tile=args.tile)
        print(
            f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    # a fresh process, so the peak RSS is that of tissue + grid alone
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(path)], stdout=subprocess.PIPE, text=True, check=True
    )
    print(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
