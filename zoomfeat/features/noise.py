"""Per-tile diffusion noise that depends only on the tile, never on batching or scheduling.

Each tile's noise comes from its own ``torch.Generator`` seeded with a 63-bit integer derived
(SHA-256, not Python's salted ``hash()``: :func:`zoomfeat.runtime.seeding.key_seed`) from
``(seed, slide id, magnification, x, y)``. So a
tile's feature is the same whatever the batch size, worker count, order, shard or machine.
Noise is always drawn on the CPU (the CPU generator is the same everywhere) and moved to the
compute device afterwards.
"""

from __future__ import annotations

import torch

from zoomfeat.runtime.seeding import generator, key_seed


def tile_seed(seed: int, slide_id: str, magnification: float, x: int, y: int) -> int:
    """A 63-bit seed for one tile: SHA-256 of ``"zoomfeat-noise|seed|slide_id|mag|x|y"``."""
    return key_seed("zoomfeat-noise", int(seed), slide_id, f"{float(magnification):g}", int(x), int(y))


def tile_noise(
    seed: int, slide_id: str, magnification: float, x: int, y: int, shape: tuple[int, ...], draws: int = 1
) -> torch.Tensor:
    """Standard normal noise (draws, *shape) float32 for one tile (draw j is the j-th block of the stream)."""
    g = generator(tile_seed(seed, slide_id, magnification, x, y), "cpu")
    return torch.randn((draws, *shape), generator=g, dtype=torch.float32)
