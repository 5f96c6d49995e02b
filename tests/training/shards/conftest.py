"""Helpers shared by the shard tests: random tiles of the right shapes, one-slide writes."""

from __future__ import annotations

import numpy as np

from zoomfeat.training.shards import ShardWriter, grid_side

C = 8


def tiles(m: int, n: int, seed: int):
    """(latent (n,3,64,64), ssl (n,C,g,g), coords (n,2)) of random content."""
    rng = np.random.default_rng(seed)
    g = grid_side(m)
    latent = rng.standard_normal((n, 3, 64, 64)).astype(np.float16)
    ssl = rng.standard_normal((n, C, g, g)).astype(np.float16)
    coords = rng.integers(0, 10000, (n, 2))
    return latent, ssl, coords


def write(data_dir, slide_id, counts: dict[int, int], seed=0, pack_rows=0, config_hash="h1"):
    """Write one slide with ``counts`` tiles per magnification index; returns the tiles written."""
    writer = ShardWriter(
        data_dir, ssl_channels=C, config_hash=config_hash, info={"encoder": "test"}, pack_rows=pack_rows
    )
    out = {}
    with writer.slide(slide_id, source=f"/slides/{slide_id}.svs") as s:
        for m, n in counts.items():
            s.start(m, 256 * 2**m)
            if n:
                out[m] = tiles(m, n, seed + m)
                s.append(m, *out[m], tile_size_level0=256 * 2**m)
    writer.close()
    return out
