"""The multi-scale training stream: samples drawn from prepared shards, reproducible by number.

Sample number ``n`` (0, 1, 2, ... over the whole run) fully determines a training sample: a
generator seeded by ``(seed, n)`` draws its magnification (from ``mag_weights``, uniform by
default), the tile at that magnification, the diffusion timestep, the noise and whether its
context is dropped (probability ``p_uncond``). Step ``s`` of a run with global batch ``G`` uses
numbers ``s*G ... s*G+G-1``; each rank and each accumulation micro-step takes its own slice
(:class:`StepBatchSampler`). Hence:

- resuming at step s reproduces the uninterrupted run exactly (no data-order state to save);
- ranks see distinct samples, and the result does not depend on how the global batch is split
  over ranks and micro-steps (2 ranks x batch 2 == 1 rank x batch 4 == batch 2 x accum 2);
- the stream does not depend on DataLoader worker count or order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.seeding import mix_seed
from zoomfeat.runtime.stopping import ignore_stop_signals
from zoomfeat.training.shards import MAG_NAMES, ShardIndex, ShardReader, parse_mag


def mag_probabilities(available: Sequence[int], weights: Any = None) -> dict[int, float]:
    """Sampling probability per available magnification index.

    ``weights``: None (uniform over the available magnifications), a mapping
    ``{mag: weight}`` (keys: indices or names like "5x"; magnifications not named get 0), or a
    list aligned with the sorted available magnifications.
    """
    available = sorted(int(m) for m in available)
    if weights is None:
        w = {m: 1.0 for m in available}
    elif isinstance(weights, Mapping):
        w = {m: 0.0 for m in available}
        for k, v in weights.items():
            try:
                m = parse_mag(k)
            except ValueError as err:
                raise ConfigError(f"mag_weights: {err}") from None
            if m not in w:
                raise ConfigError(
                    f"mag_weights names {MAG_NAMES.get(m, k)}, which the training data does not have (it has {[MAG_NAMES[a] for a in available]})"
                )
            w[m] = float(v)
    else:
        weights = list(weights)
        if len(weights) != len(available):
            raise ConfigError(
                f"mag_weights has {len(weights)} entries but the data has {len(available)} magnifications {[MAG_NAMES[a] for a in available]}"
            )
        w = {m: float(v) for m, v in zip(available, weights)}
    if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise ConfigError(f"mag_weights must be >= 0 with a positive sum, got {w}")
    total = sum(w.values())
    return {m: v / total for m, v in w.items() if v > 0}


class MultiScaleDataset(torch.utils.data.Dataset):
    """Map-style dataset whose key is the sample number (see the module docstring).

    Each item: ``latent`` float32 (3,64,64), ``ssl`` float32 (C,g,g), ``mag`` int, ``t`` int,
    ``noise`` float32 (3,64,64), ``keep`` bool (False = context dropped), ``n`` int.
    """

    def __init__(
        self,
        index: ShardIndex,
        *,
        seed: int = 0,
        mag_weights: Any = None,
        p_uncond: float = 0.1,
        num_timesteps: int = 1000,
        max_open_files: int = 64,
    ) -> None:
        self.index = index
        self.reader = ShardReader(index, max_open=max_open_files)
        self.seed = int(seed)
        self.p_uncond = float(p_uncond)
        self.num_timesteps = int(num_timesteps)
        probs = mag_probabilities(list(index.mags), mag_weights)
        self.mags = sorted(probs)
        self.probs = torch.tensor([probs[m] for m in self.mags], dtype=torch.float64)
        self.sizes = [len(index.mags[m]) for m in self.mags]

    def __len__(self) -> int:  # tiles available; the stream itself is unbounded
        return sum(self.sizes)

    def draw(self, n: int) -> dict[str, Any]:
        """The random choices of sample ``n`` without reading data."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, n))
        k = int(torch.multinomial(self.probs, 1, generator=g)) if len(self.mags) > 1 else 0
        i = int(torch.randint(self.sizes[k], (1,), generator=g))
        t = int(torch.randint(self.num_timesteps, (1,), generator=g))
        keep = bool(torch.rand(1, generator=g).item() >= self.p_uncond)
        noise = torch.randn(3, 64, 64, generator=g)
        return {"mag": self.mags[k], "i": i, "t": t, "keep": keep, "noise": noise}

    def __getitem__(self, n: int) -> dict[str, Any]:
        d = self.draw(int(n))
        tile = self.reader.read(d["mag"], d["i"])
        return {
            "latent": torch.from_numpy(np.asarray(tile["latent"], dtype=np.float32)),
            "ssl": torch.from_numpy(np.asarray(tile["ssl"], dtype=np.float32)),
            "mag": d["mag"],
            "t": d["t"],
            "noise": d["noise"],
            "keep": d["keep"],
            "n": int(n),
        }


def collate_multiscale(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a mixed-magnification batch; UNI grids (sizes differ per mag) are grouped by mag.

    ``ssl_groups``: list of ``(mag, row_indices LongTensor, grids FloatTensor (k,C,g,g))``.
    """
    mags = torch.tensor([it["mag"] for it in items], dtype=torch.long)
    groups = []
    for m in sorted(set(mags.tolist())):
        rows = torch.nonzero(mags == m).flatten()
        groups.append((m, rows, torch.stack([items[r]["ssl"] for r in rows.tolist()])))
    return {
        "latent": torch.stack([it["latent"] for it in items]),
        "noise": torch.stack([it["noise"] for it in items]),
        "t": torch.tensor([it["t"] for it in items], dtype=torch.long),
        "keep": torch.tensor([it["keep"] for it in items], dtype=torch.bool),
        "mag": mags,
        "n": torch.tensor([it["n"] for it in items], dtype=torch.long),
        "ssl_groups": groups,
    }


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches of sample numbers for steps ``start_step .. steps-1``.

    Global batch per optimiser step: G = batch_size * world_size * grad_accum. Micro-step a of
    step s on rank r takes numbers ``s*G + (a*world_size + r)*batch_size + [0, batch_size)``.
    ``repeat_first_step`` reuses step 0's numbers every step (fixed-batch overfitting checks).
    """

    def __init__(
        self,
        batch_size: int,
        steps: int,
        *,
        start_step: int = 0,
        world_size: int = 1,
        rank: int = 0,
        grad_accum: int = 1,
        repeat_first_step: bool = False,
    ) -> None:
        if batch_size < 1 or grad_accum < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"bad batch layout: batch_size={batch_size} grad_accum={grad_accum} rank={rank}/{world_size}"
            )
        self.batch_size = batch_size
        self.steps = steps
        self.start_step = start_step
        self.world_size = world_size
        self.rank = rank
        self.grad_accum = grad_accum
        self.repeat_first_step = repeat_first_step

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.grad_accum

    def numbers(self, step: int, micro: int) -> list[int]:
        s = 0 if self.repeat_first_step else step
        base = s * self.global_batch + (micro * self.world_size + self.rank) * self.batch_size
        return list(range(base, base + self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            for micro in range(self.grad_accum):
                yield self.numbers(step, micro)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.grad_accum


def make_loader(
    dataset: MultiScaleDataset,
    sampler: StepBatchSampler,
    num_workers: int = 2,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """DataLoader over ``dataset`` driven by ``sampler`` (order-preserving, any worker count)."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        # workers ignore SIGTERM/SIGINT: the trainer finishes its step and ends them (runtime.stopping)
        kwargs.update(prefetch_factor=4, persistent_workers=False, worker_init_fn=ignore_stop_signals)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_multiscale,
        pin_memory=pin_memory,
        **kwargs,
    )
