"""Patch sampling at any magnification, conditioned on a slide region's UNI grid or on CDM samples.

docs/generation.md, "Patch sampling" ([R] ``notebooks/sample_patches_brca.ipynb``, ``ldm/data/brca.py``).

A 256^2 patch at magnification index m (20 / 2^m x) covers 2^m x 2^m 20x tiles. Its conditioning
is the 2^m x 2^m grid of 20x SSL (UNI) embeddings of those tiles, average-pooled to 8x8 when
larger, standardised per position ``(x - mean_c) / (std_c + 1e-8)`` (``ZoomLDM.condition``), then
summarized with the index m: context [B, 65, D]; the unconditional context is zeros.

Sampling [R]: PLMS with S = 50 (S + 1 = 51 UNet calls on a batch of 2B), guidance in the sampler
convention ``e_u + s (e_c - e_u)`` with s = 2 (``guidance.cfg_sampler``), eta 0, x_T ~ N(0, 1)
(injectable), the EMA UNet; decode quantises; output ``uint8(clamp((x + 1)/2, 0, 1) 255)``
(truncation). Without a reference region, a CDM (``cdm.py``) samples the context instead
("CDM": 200 respaced DDIM steps; the official FID script uses s = 1.75).

Reading a region [I]: the level-0 box at (x0, y0) of ``256 2^m`` 20x pixels (0.5 um/px) is read
once at 20x (``Slide.read_region``), cut into its 2^m x 2^m tiles (row-major) for the encoder, and
the reference patch at m is the same box read at ``0.5 2^m`` um/px.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zoomfeat.generation.costs import Tracker
from zoomfeat.generation.latent_steps import decode, to_uint8
from zoomfeat.model.callbacks import StepCallback
from zoomfeat.runtime.errors import ConfigError, InputError
from zoomfeat.runtime.units import MPP_20X, TILE_PX

SAMPLERS = ("plms", "ddim")


@dataclass
class Region:
    """A square region of a slide: level-0 top-left (x0, y0) covering ``tiles`` x ``tiles`` 20x tiles."""

    x0: float
    y0: float
    tiles: int


def read_region_20x(slide, region: Region) -> np.ndarray:
    """The region at 20x, uint8 (256 t, 256 t, 3)."""
    size = TILE_PX * region.tiles
    extent = size * MPP_20X / slide.mpp
    w, h = slide.dimensions
    if region.x0 < 0 or region.y0 < 0 or region.x0 + extent > w + 1e-6 or region.y0 + extent > h + 1e-6:
        raise InputError(
            f"{slide.path}: a {region.tiles}x{region.tiles}-tile region at 20x ({extent:.0f} level-0 px) at "
            f"({region.x0:g}, {region.y0:g}) does not fit in the slide ({w}x{h}); choose another x0/y0"
        )
    return slide.read_region(region.x0, region.y0, size, MPP_20X)


def split_tiles(image: np.ndarray, tiles: int) -> np.ndarray:
    """(256 t, 256 t, 3) -> (t*t, 256, 256, 3), row-major (n = r t + c)."""
    s = image.shape[0] // tiles
    return image.reshape(tiles, s, tiles, s, 3).transpose(0, 2, 1, 3, 4).reshape(tiles * tiles, s, s, 3)


def embed_tiles(encoder, tiles: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Encoder embeddings [n, C] of uint8 tiles (n, H, W, 3)."""
    out = []
    dev = encoder.mean.device
    with torch.no_grad():
        for s in range(0, len(tiles), batch_size):
            x = encoder.preprocess(torch.from_numpy(np.ascontiguousarray(tiles[s : s + batch_size])).to(dev))
            out.append(encoder(x).float().cpu())
    return torch.cat(out)


def region_ssl_grid(slide, region: Region, encoder, batch_size: int = 64) -> tuple[torch.Tensor, np.ndarray]:
    """(the unpooled 20x SSL grid [C, t, t] of the region, the region image at 20x)."""
    img = read_region_20x(slide, region)
    emb = embed_tiles(encoder, split_tiles(img, region.tiles), batch_size)
    t = region.tiles
    return emb.T.reshape(emb.shape[1], t, t).contiguous(), img


def reference_patch(slide, region: Region) -> np.ndarray:
    """The region as one 256^2 patch at its own magnification (0.5 t um/px)."""
    return slide.read_region(region.x0, region.y0, TILE_PX, MPP_20X * region.tiles)


def sample_patches(
    model: Any,
    contexts: torch.Tensor,
    *,
    steps: int = 50,
    guidance: float = 2.0,
    sampler: str = "plms",
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    tracker: Tracker | None = None,
    callback: StepCallback | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """(latents [B, 3, 64, 64], uint8 images [B, 256, 256, 3]) from contexts [B, 65, D] ("Patch sampling").

    ``callback(step, t, state)`` observes every sampler step (stage ``"ddim"`` or ``"plms"``,
    :meth:`zoomfeat.model.zoomldm.ZoomLDM.sample`)."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler={sampler!r}: use one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    b = contexts.shape[0]
    if tracker is not None:
        calls = steps + 1 if sampler == "plms" else steps
        tracker.unet((b if guidance == 1.0 else 2 * b) * calls)
    z = model.sample(
        contexts,
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        x_T=x_T,
        generator=generator,
        callback=callback,
    )
    img = decode(model, z, tracker)
    return z, to_uint8(img)


def condition_region(model, grid: torch.Tensor, mag: int, tracker: Tracker | None = None) -> torch.Tensor:
    """Context [1, 65, D] of a raw grid [C, 2^m, 2^m] at index m (pooled to 8x8, standardised)."""
    if not 0 <= int(mag) < model.num_mags:
        raise ConfigError(f"magnification index {mag} out of range 0..{model.num_mags - 1}")
    if tracker is not None:
        tracker.summarizer(1)
    with torch.no_grad():
        return model.condition(grid[None].to(model.device), int(mag)).float()
