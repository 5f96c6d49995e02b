"""Sampling contexts with the CDM, and training it on ``prepare``'s shards.

The maths is in :mod:`zoomfeat.generation.cdm` ("Training"); spec section 5, golden G7.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zoomfeat.generation.cdm import NUM_TOKENS, DiT
from zoomfeat.generation.cdm_diffusion import CDMDiffusion
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.seeding import mix_seed

# sampling and training


def sample_contexts(
    cdm: DiT,
    mag: int,
    n: int,
    respacing: int = 200,
    generator: torch.Generator | None = None,
    z: torch.Tensor | None = None,
    tracker=None,
) -> torch.Tensor:
    """``n`` CDM samples at magnification index ``mag``, as UNet contexts [n, 65, C] (spec 5.5)."""
    if not 0 <= int(mag) < cdm.num_classes:
        raise ConfigError(f"CDM magnification index {mag} out of range 0..{cdm.num_classes - 1}")
    dev = next(cdm.parameters()).device
    if z is None:
        g_dev = generator.device if generator is not None else dev
        z = torch.randn((n, cdm.in_channels, cdm.num_tokens), generator=generator, device=g_dev)
    z = z.to(dev).float()
    y = torch.full((z.shape[0],), int(mag), dtype=torch.long, device=dev)
    x = CDMDiffusion(respacing=respacing).ddim_sample(cdm, z, y, tracker)
    return x.transpose(1, 2).contiguous()


@dataclass
class CDMTrainOptions:
    """The official recipe (spec 5.4) with sizes for a run: steps, batch, lr, EMA decay, seed."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    seed: int = 0
    grad_checkpointing: bool = False
    log_every: int = 100
    checkpoint_every: int = 50_000


def cdm_targets(ldm, grids: torch.Tensor, mags: torch.Tensor) -> torch.Tensor:
    """Training targets [B, C, 65]: the LDM summarizer output of standardised grids, transposed [R]."""
    with torch.no_grad():
        return ldm.condition(grids, mags).float().transpose(1, 2)


def grid_batches(
    ldm,
    counts: Mapping[int, int],
    read: Callable[[int, int], Any],
    batch_size: int,
    seed: int = 0,
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """``batches(step)`` for :func:`train_cdm` from tiles of prepared data (spec 5.4).

    Each sample draws a magnification uniformly among those present (the official draws among
    all 8), then a tile uniformly; ``read(m, i)`` returns its raw SSL grid [C, g, g]. The target
    is the LDM summarizer output of the pooled, standardised grid (``ZoomLDM.condition``),
    transposed to [C_ctx, 65]. The draw depends on (seed, step) only.
    """
    mags = sorted(m for m, n in counts.items() if n > 0)
    if not mags:
        raise ConfigError("CDM training: the data hold no tiles")

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(mix_seed(int(seed), int(step), 1))
        ms = [mags[j] for j in torch.randint(len(mags), (batch_size,), generator=g).tolist()]
        idx = [int(torch.randint(counts[m], (1,), generator=g)) for m in ms]
        out = torch.empty(batch_size, ldm.context_dim, NUM_TOKENS)
        by_side: dict[tuple[int, ...], list[int]] = {}
        grids = [torch.as_tensor(np.asarray(read(m, i))).float() for m, i in zip(ms, idx)]
        for k, grid in enumerate(grids):
            by_side.setdefault(tuple(grid.shape), []).append(k)
        for ks in by_side.values():
            grid = torch.stack([grids[k] for k in ks])
            out[ks] = cdm_targets(ldm, grid, torch.tensor([ms[k] for k in ks])).cpu()
        return out, torch.tensor(ms)

    return batches


def train_cdm(
    cdm: DiT,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    opts: CDMTrainOptions,
    state: Mapping[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``cdm`` on ``batches(step) -> (target [B, C, 65], mag [B])``; returns ``{model, ema, opt, step}``.

    The batch and the timesteps/noise of a step depend on the step number only (seeded with
    ``mix_seed(seed, step)``), so a resumed run continues exactly as an uninterrupted one.

    ``state``: a previous return value or saved checkpoint to resume from. ``save(state)`` is
    called every ``checkpoint_every`` steps and at the end (the caller writes it atomically).
    """
    dev = next(cdm.parameters()).device
    diffusion = CDMDiffusion()
    ema = copy.deepcopy(cdm).requires_grad_(False)
    opt = torch.optim.AdamW(
        [p for p in cdm.parameters() if p.requires_grad], lr=opts.lr, weight_decay=opts.weight_decay
    )
    step = 0
    if state is not None:
        cdm.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = int(state.get("step", 0))
    cdm.grad_checkpointing = opts.grad_checkpointing
    cdm.train()
    while step < opts.steps:
        gen = torch.Generator().manual_seed(mix_seed(int(opts.seed), step))
        x0, y = batches(step)
        x0, y = x0.to(dev).float(), y.to(dev).long()
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        loss = diffusion.training_losses(cdm, x0, t, y, noise)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), cdm.parameters()):
                pe.mul_(opts.ema_decay).add_(pm.detach(), alpha=1 - opts.ema_decay)
        step += 1
        if log is not None and (step % opts.log_every == 0 or step == opts.steps):
            log(f"step {step}/{opts.steps} loss {loss.item():.4f}")
        if save is not None and step % opts.checkpoint_every == 0:
            save({"model": cdm.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step})
    cdm.eval()
    out = {"model": cdm.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step}
    if save is not None:
        save(out)
    return out
