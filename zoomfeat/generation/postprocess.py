"""Seam post-processing of a large image: re-noise, then denoise overlapping windows.

docs/generation.md, "Seam post-processing".

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
from zoomfeat.model.callbacks import StepCallback, StepState
from zoomfeat.runtime.errors import ConfigError

# ----------------------------------------------------------------------------------------------
# seam post-processing


def slerp(t: float, v0: np.ndarray, v1: np.ndarray, dot_threshold: float = 0.9995) -> np.ndarray:
    """Spherical interpolation on the raw vectors (NumPy, float32 as NumPy 2 computes it) [R]::

    cos(theta) = <v0/|v0|, v1/|v1|>
    slerp = sin((1 - t) theta) / sin(theta) v0 + sin(t theta) / sin(theta) v1
          = (1 - t) v0 + t v1                  when |cos(theta)| > dot_threshold
    """
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
    """The slerp-interpolated raw embedding of window (i, j) from the replicate-padded grid [C, e, e]::

    (r, c) = (i // 64, j // 64),  t1 = j/64 - c,  t2 = i/64 - r
    v = slerp(t2, slerp(t1, E[r, c], E[r, c+1]), slerp(t1, E[r+1, c], E[r+1, c+1]))
    """
    padded = np.pad(grid, ((0, 0), (0, 1), (0, 1)), mode="edge")
    r, c = i // LATENT, j // LATENT
    t1 = j / LATENT - j // LATENT
    t2 = i / LATENT - i // LATENT
    top = slerp(t1, padded[:, r, c], padded[:, r, c + 1])
    bottom = slerp(t1, padded[:, r + 1, c], padded[:, r + 1, c + 1])
    return slerp(t2, top, bottom)


@dataclass(kw_only=True)
class PostOptions:
    """Seam post-processing defaults (official: t0 300, stride 50, w 2, window stride 16)."""

    t0: int = 300
    stride: int = 50
    guidance: float = 2.0
    window_stride: int = 16
    batch_size: int = 16
    t_offset: int = 0


def window_vectors(ssl_grid: torch.Tensor, positions: list[tuple[int, int]]) -> torch.Tensor:
    """The raw interpolated embedding of every window [W, C] (:func:`window_embedding`), float32."""
    grid = ssl_grid.detach().float().cpu().numpy()
    vecs = np.stack([window_embedding(grid, i, j) for i, j in positions]).astype(np.float32)
    return torch.from_numpy(vecs)


def window_contexts(
    model: Any,
    ssl_grid: torch.Tensor,
    positions: list[tuple[int, int]],
    *,
    chunk: int = 64,
    tracker: Tracker | None = None,
) -> torch.Tensor:
    """Per-window contexts [W, 65, D]: c_w = S(std(v_w), m = 0), v_w = :func:`window_vectors`.

    ``std`` standardises over channels without eps: (v - mean_c v) / std_c v (unbiased).
    """
    v = window_vectors(ssl_grid, positions)
    out = []
    for s in range(0, len(positions), chunk):
        out.append(summarize(model, v[s : s + chunk, :, None, None], mag=0, norm="noeps", tracker=tracker))
    return torch.cat(out)


def postprocess(
    model: Any,
    tiles: torch.Tensor,
    ssl_grid: torch.Tensor,
    *,
    opts: PostOptions | None = None,
    noise: Noise | None = None,
    tracker: Tracker | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Official ``postprocess_image``: SDEdit re-noising + window-averaged denoising.

    docs/generation.md, "Seam post-processing"::

        x = canvas(sqrt(abar[t0-1]) tiles + sqrt(1 - abar[t0-1]) z0)
        per step t = t0, t0 - stride, ... > 0:
            x0 = mean over the windows w covering a pixel of x0hat_w(x_w; c_w)
            eps = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t)
            x  <- sqrt(abar_p) x0 + sqrt(1 - abar_p - btilde) eps + sqrt(btilde) z

    Args:
        tiles: the 20x state in tile layout [N, 3, 64, 64]; ssl_grid: the raw grid [C, e, e].
        noise: source of ``noise_init_tiles`` (tile layout) then ``noise_s{k}_canvas`` (canvas).
        callback: ``callback(s, t, state)`` after every step: stage ``"post"``, ``latents`` = the
            canvas x, ``x0hat`` = the window-averaged x0 canvas, ``eps``, ``noise`` = z;
            ``tensors``: ``contexts`` (the window contexts [W, 65, D]).
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
    ctx = window_contexts(model, ssl_grid, pos, tracker=tracker).to(dev)
    for s, c in enumerate(step_coefs(model, opts.t0, opts.stride)):
        x0_map = torch.zeros_like(x)
        count = torch.zeros_like(x)
        for start in range(0, len(pos), opts.batch_size):
            chunk = pos[start : start + opts.batch_size]
            xw = torch.cat([x[:, :, i : i + LATENT, j : j + LATENT] for i, j in chunk])
            eps = model_pred(
                model,
                xw,
                t=c.t,
                context=ctx[start : start + len(chunk)],
                w=opts.guidance,
                t_offset=opts.t_offset,
                tracker=tracker,
            )
            x0w = x0hat(xw, eps, c.at)
            for n, (i, j) in enumerate(chunk):
                x0_map[:, :, i : i + LATENT, j : j + LATENT] += x0w[n : n + 1]
                count[:, :, i : i + LATENT, j : j + LATENT] += 1
        x0 = x0_map / count
        at = c.at.to(dev)
        eps = (x - at.sqrt() * x0) / (1 - at).sqrt()
        z = noise(f"noise_s{s}_canvas", tuple(x.shape)).to(dev)
        x = noise_step(x0, eps, z=z, coefs=c, noise_term="r")
        if callback is not None:
            state = StepState("post", x, x0hat=x0, eps=eps, noise=z, tensors={"contexts": ctx})
            callback(s, c.t, state)
    return canvas_to_tiles(x, e)


__all__ = ["PostOptions", "postprocess", "slerp", "window_contexts", "window_embedding", "window_vectors"]
