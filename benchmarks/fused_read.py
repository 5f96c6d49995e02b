"""Reading a fused bag from its file against deriving it from the 20x and 5x bags (issue 20).

    OMP_NUM_THREADS=1 python benchmarks/fused_read.py --dir /tmp/fused_read
    OMP_NUM_THREADS=1 python benchmarks/fused_read.py --dir /tmp/fused_read --tiles 10000 --reads 9

Writes one slide's family (``z_20x``, ``z_5x`` with ``parent_idx``, ``k`` kept children per
parent) twice, once with the ``z_fused`` file and once without, in float16 and float32, at the
default recipe's width (1536 per magnification, so 3072 per fused row), then reads the fused bag
through :func:`zoomfeat.bags.open_checked_bag` (the benchmark's, ``BagDataset``'s and the exports'
reader) from the file and derived, interleaved, and prints the median CPU seconds per read, their
ratio, and the bytes on disk of each layout. The derived rows are checked to equal the file's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from zoomfeat.bags import bag_path, open_checked_bag, write_bag

COORDS = {"patch_size": 256, "patch_size_level0": 256, "level0_magnification": 20, "target_magnification": 20,
          "overlap": 0, "name": "s", "level0_width": 1, "level0_height": 1}  # fmt: skip


def write_family(root: Path, *, tiles: int, k: int, width: int, dtype: str, fused_file: bool) -> None:
    """One slide's 20x and 5x bags (and the fused file when asked), random normal features."""
    rng = np.random.default_rng(0)
    parent_idx = np.arange(tiles) // k
    n5 = int(parent_idx.max()) + 1
    c5 = np.stack([np.arange(n5) * 1024, np.zeros(n5)], 1)
    c20 = c5[parent_idx] + np.stack([(np.arange(tiles) % 4) * 256, np.zeros(tiles)], 1)
    x20 = rng.standard_normal((tiles, width)).astype(np.float32)
    x5 = rng.standard_normal((n5, width)).astype(np.float32)
    attrs = {"slide_id": "s", "config_hash": "0", "complete": True}
    write_bag(bag_path(root, "z_20x", "s"), x20, c20, COORDS, attrs=attrs, parent_idx=parent_idx, dtype=dtype)
    write_bag(
        bag_path(root, "z_5x", "s"), x5, c5, {**COORDS, "patch_size_level0": 1024}, attrs=attrs, dtype=dtype
    )
    if fused_file:
        fused = np.concatenate([x20, x5[parent_idx]], axis=1)
        write_bag(
            bag_path(root, "z_fused", "s"),
            fused,
            c20,
            COORDS,
            attrs=attrs,
            parent_idx=parent_idx,
            dtype=dtype,
        )


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.h5"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--tiles", type=int, default=3000, help="kept 20x tiles of the slide")
    ap.add_argument("--k", type=int, default=10, help="kept children per 5x parent")
    ap.add_argument("--width", type=int, default=1536, help="features per tile at each magnification")
    ap.add_argument("--reads", type=int, default=5, help="reads of each layout (interleaved)")
    args = ap.parse_args()
    print(f"{args.tiles} kept 20x tiles, {args.k} per parent, fused rows of {2 * args.width} values")
    for dtype in ("float16", "float32"):
        roots = {how: args.dir / dtype / how for how in ("file", "derived")}
        for how, root in roots.items():
            write_family(
                root, tiles=args.tiles, k=args.k, width=args.width, dtype=dtype, fused_file=how == "file"
            )
        seconds: dict[str, list[float]] = {how: [] for how in roots}
        rows = {}
        for _ in range(args.reads):
            for how, root in roots.items():
                t = time.process_time()
                rows[how] = open_checked_bag(bag_path(root, "z_fused", "s")).features
                seconds[how].append(time.process_time() - t)
        assert np.array_equal(rows["file"], rows["derived"]), "derived rows differ from the file's"
        med = {how: float(np.median(v)) for how, v in seconds.items()}
        print(
            f"{dtype}: file {med['file'] * 1e3:.1f} ms, derived {med['derived'] * 1e3:.1f} ms CPU per read "
            f"(ratio {med['derived'] / med['file']:.2f}); on disk {disk_bytes(roots['file']) / 2**20:.1f} MiB "
            f"with the fused file, {disk_bytes(roots['derived']) / 2**20:.1f} MiB without"
        )


if __name__ == "__main__":
    main()
