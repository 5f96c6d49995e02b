"""Seam post-processing of a large image: re-noise, then denoise overlapping windows (spec 2.7).

The maths and the tags are in :mod:`zoomfeat.generation.large` ("seam post-processing").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zoomfeat.generation.costs import Tracker
from zoomfeat.generation.guidance import model_pred, summarize
from zoomfeat.generation.latent_steps import (
    LATENT,
    Noise,
    canvas_to_tiles,
    noise_step,
    step_coefs,
    tiles_to_canvas,
    window_positions,
    x0hat,
)
from zoomfeat.runtime.errors import ConfigError

# ----------------------------------------------------------------------------------------------
# seam post-processing


def slerp(t: float, v0: np.ndarray, v1: np.ndarray, dot_threshold: float = 0.9995) -> np.ndarray:
    """Spherical interpolation on the raw vectors (NumPy, float32 as NumPy 2 computes it) [R]."""
    v0n = v0 / np.linalg.norm(v0)
    v1n = v1 / np.linalg.norm(v1)
    dot = np.sum(v0n * v1n)
    if np.abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta0 = np.arccos(dot)
    sin0 = np.sin(theta0)
    theta_t = theta0 * t
    s0 = np.sin(theta0 - theta_t) / sin0
    s1 = np.sin(theta_t) / sin0
    return s0 * v0 + s1 * v1


def window_embedding(grid: np.ndarray, i: int, j: int) -> np.ndarray:
    """The slerp-interpolated raw embedding of window (i, j) from the replicate-padded grid [C, e, e]."""
    padded = np.pad(grid, ((0, 0), (0, 1), (0, 1)), mode="edge")
    r, c = i // LATENT, j // LATENT
    t1 = j / LATENT - j // LATENT
    t2 = i / LATENT - i // LATENT
    top = slerp(t1, padded[:, r, c], padded[:, r, c + 1])
    bottom = slerp(t1, padded[:, r + 1, c], padded[:, r + 1, c + 1])
    return slerp(t2, top, bottom)


@dataclass
class PostOptions:
    """Seam post-processing defaults (spec 2.4: t0 300, stride 50, w 2, window stride 16)."""

    t0: int = 300
    stride: int = 50
    guidance: float = 2.0
    window_stride: int = 16
    batch_size: int = 16
    t_offset: int = 0


def window_contexts(
    model,
    ssl_grid: torch.Tensor,
    positions: list[tuple[int, int]],
    chunk: int = 64,
    tracker=None,
    record=None,
) -> torch.Tensor:
    """Per-window contexts [W, 65, D]: slerp-interpolated raw embedding, standardised (no eps), mag 0."""
    grid = ssl_grid.detach().float().cpu().numpy()
    vecs = np.stack([window_embedding(grid, i, j) for i, j in positions]).astype(np.float32)
    v = torch.from_numpy(vecs)
    if record is not None:
        record["interp_pre_norm"] = v
    out = []
    for s in range(0, len(positions), chunk):
        out.append(summarize(model, v[s : s + chunk, :, None, None], 0, "noeps", tracker))
    return torch.cat(out)


def postprocess(
    model,
    tiles: torch.Tensor,
    ssl_grid: torch.Tensor,
    opts: PostOptions | None = None,
    noise: Noise | None = None,
    tracker: Tracker | None = None,
    record: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Official ``postprocess_image`` (spec 2.7): SDEdit re-noising + window-averaged denoising.

    Args:
        tiles: the 20x state in tile layout [N, 3, 64, 64]; ssl_grid: the raw grid [C, e, e].
        noise: source of ``noise_init_tiles`` (tile layout) then ``noise_s{k}_canvas`` (canvas).
    Returns the result in tile layout.
    """
    opts = opts or PostOptions()
    noise = noise or Noise(device=model.device)
    e = int(round(math.sqrt(tiles.shape[0])))
    if e * e != tiles.shape[0] or tuple(ssl_grid.shape[1:]) != (e, e):
        raise ConfigError(
            f"{tiles.shape[0]} tiles need a square grid and an SSL grid [C, e, e], got {tuple(ssl_grid.shape)}"
        )
    dev = model.device
    ac = model.schedule.alphas_cumprod.detach().cpu().float()
    a0 = ac[opts.t0 - 1].to(dev)
    z0 = noise("noise_init_tiles", tuple(tiles.shape)).to(dev)
    x = tiles_to_canvas(a0.sqrt() * tiles.to(dev) + (1 - a0).sqrt() * z0, e)
    _, _, hh, ww = x.shape
    pos = window_positions(hh, ww, LATENT, opts.window_stride)
    ctx = window_contexts(model, ssl_grid, pos, tracker=tracker, record=record).to(dev)
    if record is not None:
        record["contexts"] = ctx
    for s, c in enumerate(step_coefs(model, opts.t0, opts.stride)):
        x0_map = torch.zeros_like(x)
        count = torch.zeros_like(x)
        for start in range(0, len(pos), opts.batch_size):
            chunk = pos[start : start + opts.batch_size]
            xw = torch.cat([x[:, :, i : i + LATENT, j : j + LATENT] for i, j in chunk])
            eps = model_pred(
                model, xw, c.t, ctx[start : start + len(chunk)], opts.guidance, opts.t_offset, tracker
            )
            x0w = x0hat(xw, eps, c.at)
            for n, (i, j) in enumerate(chunk):
                x0_map[:, :, i : i + LATENT, j : j + LATENT] += x0w[n : n + 1]
                count[:, :, i : i + LATENT, j : j + LATENT] += 1
        x0 = x0_map / count
        at = c.at.to(dev)
        eps = (x - at.sqrt() * x0) / (1 - at).sqrt()
        z = noise(f"noise_s{s}_canvas", tuple(x.shape)).to(dev)
        if record is not None:
            record.setdefault("step_x0_canvas", []).append(x0)
        x = noise_step(x0, eps, z, c, "r")
    return canvas_to_tiles(x, e)


__all__ = ["PostOptions", "postprocess", "slerp", "window_contexts", "window_embedding"]
