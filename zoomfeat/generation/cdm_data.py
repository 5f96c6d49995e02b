"""The CDM's training data: sample number -> (target, magnification, timestep, noise).

docs/generation.md, "CDM" (training; [R] ``train_cdm.py``). As the ZoomLDM trainer's stream
(:mod:`zoomfeat.training.dataset`), sample number ``n`` (0, 1, 2, ... over the whole run) fully
determines a training sample: a generator seeded with ``mix_seed(seed, n)`` draws

    m ~ U(magnifications the data hold)     (the official code draws among all 8)
    i ~ U{0 .. tiles at m - 1}
    t ~ U{0 .. 999}
    noise ~ N(0, I) of shape [C, 65]

and the target is ``x0 = Summarizer(prepare(grid_i), m)^T`` [C, 65]: the LDM summarizer output
of the tile's pooled, standardised UNI grid, transposed [R] (:func:`cdm_targets`). Why keyed
draws: no data-order state to save (resume is exact), and a batch is its samples whatever it is
cut into (DDP ranks, resumed runs), up to the rounding of the summarizer's batched matmuls.

The tiles come from ``prepare``'s shards through :class:`CDMData` (the entry point builds it;
generation cannot import training).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zoomfeat.generation.cdm import NUM_TOKENS
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.seeding import mix_seed

if TYPE_CHECKING:
    from zoomfeat.model.zoomldm import ZoomLDM


def cdm_targets(ldm, grids: torch.Tensor, mags: torch.Tensor) -> torch.Tensor:
    """Training targets: the LDM summarizer output of standardised grids, transposed [R].

    Args:
        grids: [B, C_ssl, g, g] raw SSL grids of one side g. mags: [B] magnification indices.

    Returns:
        [B, C_ctx, 65] float32 on the LDM's device.
    """
    with torch.no_grad():
        return ldm.condition(grids, mags).float().transpose(1, 2)


@dataclass
class CDMData:
    """Prepared tiles as the CDM trainer reads them (the entry point builds it from the shards).

    ``read(m, i)`` returns tile ``i``'s raw SSL grid [C, g, g] at magnification index ``m``;
    ``fingerprint`` (tiles per magnification) is checked on resume.
    """

    counts: Mapping[int, int]
    read: Callable[[int, int], Any]
    ssl_channels: int
    fingerprint: Mapping[str, int] = field(default_factory=dict)


class CDMStream:
    """Sample number -> (target, magnification, timestep, noise), keyed by (seed, number)."""

    def __init__(self, ldm: ZoomLDM, data: CDMData, seed: int = 0, num_timesteps: int = 1000) -> None:
        self.ldm, self.data, self.seed, self.num_timesteps = ldm, data, int(seed), int(num_timesteps)
        self.mags = sorted(int(m) for m, n in data.counts.items() if n > 0)
        if not self.mags:
            raise ConfigError("CDM training: the data hold no tiles")
        self.channels = int(ldm.context_dim)

    def draw(self, n: int) -> dict[str, Any]:
        """The random choices of sample ``n``: ``mag``, tile ``i``, ``t`` and ``noise`` [C, 65]."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, int(n)))
        m = self.mags[int(torch.randint(len(self.mags), (1,), generator=g))]
        i = int(torch.randint(int(self.data.counts[m]), (1,), generator=g))
        t = int(torch.randint(self.num_timesteps, (1,), generator=g))
        noise = torch.randn((self.channels, NUM_TOKENS), generator=g)
        return {"mag": m, "i": i, "t": t, "noise": noise}

    def batch(self, numbers: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Samples ``numbers``: x0 [b, C, 65], mag [b], t [b], noise [b, C, 65] (CPU float32 / long).

        Grids of one side are summarised together (the summarizer works per sample).
        """
        draws = [self.draw(n) for n in numbers]
        grids = [torch.as_tensor(np.asarray(self.data.read(d["mag"], d["i"]))).float() for d in draws]
        x0 = torch.empty(len(draws), self.channels, NUM_TOKENS)
        mags = torch.tensor([d["mag"] for d in draws], dtype=torch.long)
        by_side: dict[tuple[int, ...], list[int]] = {}
        for k, grid in enumerate(grids):
            by_side.setdefault(tuple(grid.shape), []).append(k)
        dev = next(self.ldm.parameters()).device
        for ks in by_side.values():
            grid = torch.stack([grids[k] for k in ks]).to(dev)
            x0[ks] = cdm_targets(self.ldm, grid, mags[ks].to(dev)).cpu()
        t = torch.tensor([d["t"] for d in draws], dtype=torch.long)
        return x0, mags, t, torch.stack([d["noise"] for d in draws])
