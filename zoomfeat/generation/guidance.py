"""The two classifier-free-guidance conventions, the official timestep offset, and context helpers.

docs/generation.md, "Classifier-free guidance"; golden G2 (``large_image_gen/utils.py`` ``model_pred``).

Two conventions, named so they are never confused:

- ``cfg_sampler`` (the LDM DDIM/PLMS samplers, ``ZoomLDM.sample``) [R]:
  ``e = e_u + s (e_c - e_u)``, batch order [uncond; cond]; the notebooks use s = 2.
- ``cfg_large`` (the large-image, super-resolution and seam code, ``model_pred``) [R]:
  ``e = (w + 1) e_c - w e_u``, batch order [cond; uncond]; the default w = 2 is s = w + 1 = 3;
  w = 0 is one conditional call.

Timestep offset [R]: ``model_pred`` feeds the UNet the float timestep **t** (1000 at the first
step of the large-image loop, outside the training range 0..999) while the callers index the
schedule at **t - 1**. :func:`model_pred` keeps that for parity (``t_offset=0``); ``t_offset=1``
feeds t - 1 instead (an explicit, non-default deviation; it changes eps by ~5e-3 on the tiny model).

Weights: zoomfeat loads the EMA weights once (``ZoomLDM.from_official(ema=True)``); the official
code enters ``ema_scope`` on every call instead (about 9.6 GB of copies per call at full size).
Stages that the official code runs on the *live* weights (seam post-processing, condition
inversion) take the model as an argument: pass one loaded with ``ema=False`` for parity [R].

Conditioning [R]/[I]: the summarizer input is a grid [B, C, h, w] (h, w <= 8) and a
magnification index; how it is standardised differs per stage, so :func:`summarize` names it:

- ``"dataloader"``: pool to 8x8 if larger, then ``(x - mean_c) / (std_c + 1e-8)`` (training data,
  ``ZoomLDM.condition``);
- ``"noeps"``: ``(x - mean_c) / std_c`` (unbiased, no eps; seam post-processing and inversion);
- ``"raw"``: no standardisation (the [C] joint loop feeds ``ssl_feat_unpooled`` as loaded).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from zoomfeat.generation.costs import Tracker
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.units import MagIndex

#: standardisation modes of :func:`summarize`
NORMALISATIONS = ("dataloader", "noeps", "raw")


def cfg_sampler(e_u: torch.Tensor, e_c: torch.Tensor, s: float) -> torch.Tensor:
    """LDM-sampler guidance ``e_u + s (e_c - e_u)`` (``ZoomLDM.sample``; s = 1 is conditional only)."""
    return e_u + s * (e_c - e_u)


def cfg_large(e_c: torch.Tensor, e_u: torch.Tensor, w: float) -> torch.Tensor:
    """Large-image guidance ``(w + 1) e_c - w e_u`` (official ``model_pred``; w = s - 1)."""
    return (w + 1) * e_c - w * e_u


def sampler_scale_from_w(w: float) -> float:
    """The ``cfg_sampler`` scale s equal to the ``cfg_large`` weight w: s = w + 1."""
    return float(w) + 1.0


def unet_eps(model, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """One UNet forward with a (float) timestep tensor [B]: the raw eps prediction.

    Bypasses ``ZoomLDM.eps`` only because that one (rightly) refuses t = 1000, which the official
    large-image code feeds (see the module docstring).
    """
    w = model.unet.conv_in.weight
    return model.unet(
        x.to(w.device, w.dtype), t.to(w.device), encoder_hidden_states=context.to(w.device, w.dtype)
    ).sample


def model_pred(
    model: Any,
    x: torch.Tensor,
    *,
    t: int,
    context: torch.Tensor,
    w: float = 2.0,
    t_offset: int = 0,
    tracker: Tracker | None = None,
) -> torch.Tensor:
    """Official ``model_pred``: guided eps ``(w+1) e_c - w e_u`` at timestep ``t`` (float, not t-1).

    Args:
        model: a ``ZoomLDM`` (load the EMA weights for parity with ``ema_scope``).
        x: latents [B, 3, 64, 64]; context: [B, 65, D] (or [1, 65, D], broadcast).
        t: the integer step t of the caller's schedule (fed as ``float(t - t_offset)``).
        w: guidance weight; 0 makes one conditional call, otherwise one call on [x; x] with
            contexts [cond; zeros].
        tracker: a :class:`~zoomfeat.generation.costs.Tracker` counting the UNet evaluations.
    """
    b = x.shape[0]
    if context.shape[0] == 1 and b != 1:
        context = context.expand(b, -1, -1)
    tt = torch.full((b,), float(t - t_offset), dtype=torch.float32)
    with torch.no_grad():
        if tracker is not None:
            tracker.guided(b)
        if w == 0:
            if tracker is not None:
                tracker.unet(b)
            return unet_eps(model, x, tt, context).float()
        if tracker is not None:
            tracker.unet(2 * b)
        e = unet_eps(
            model, torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([context, torch.zeros_like(context)])
        )
        e_c, e_u = e.float().chunk(2)
        return cfg_large(e_c, e_u, w)


def standardise(grid: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-position standardisation of a grid [B, C, h, w] over channels (see module docstring)::

    dataloader: pool8(g) -> (g - mean_c g) / (std_c g + 1e-8);  noeps: (g - mean_c g) / std_c g;  raw: g
    """
    if mode not in NORMALISATIONS:
        raise ConfigError(f"SSL normalisation {mode!r}: use one of {', '.join(NORMALISATIONS)}")
    x = grid.float()
    if mode == "raw":
        return x
    if mode == "dataloader":
        if x.shape[-1] > 8 or x.shape[-2] > 8:
            x = F.adaptive_avg_pool2d(x, 8)
        return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-8)
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)


def pool_grid(grid: torch.Tensor, max_side: int = 8) -> torch.Tensor:
    """``adaptive_avg_pool2d`` to ``max_side`` when the grid is larger (the summarizer sees <= 8x8)."""
    if grid.shape[-1] > max_side or grid.shape[-2] > max_side:
        return F.adaptive_avg_pool2d(grid.float(), max_side)
    return grid


def summarize(
    model: Any,
    grid: torch.Tensor,
    *,
    mag: MagIndex | int | torch.Tensor,
    norm: str = "dataloader",
    tracker: Tracker | None = None,
) -> torch.Tensor:
    """Summarizer context [B, 65, D] of grid [B, C, h, w] at magnification index ``mag``."""
    if grid.ndim == 3:
        grid = grid[None]
    if grid.ndim != 4 or grid.shape[1] != model.ssl_channels:
        raise ConfigError(
            f"SSL grid must be [B, {model.ssl_channels}, h, w] for this model, got {tuple(grid.shape)}"
        )
    x = standardise(pool_grid(grid) if norm != "dataloader" else grid, norm)
    w = model.summarizer.dim_reduce.weight
    if tracker is not None:
        tracker.summarizer(x.shape[0])
    with torch.no_grad():
        return model.summarizer(x.to(w.device, w.dtype), mag).float()


def tile_contexts(
    model: Any,
    grid: torch.Tensor,
    *,
    norm: str = "dataloader",
    chunk: int = 64,
    tracker: Tracker | None = None,
) -> torch.Tensor:
    """One 20x context per grid cell: [C, e, e] -> [e*e, 65, D], row-major (n = r*e + c), mag 0."""
    c, e1, e2 = grid.shape
    cells = grid.reshape(c, e1 * e2).T[:, :, None, None]  # [N, C, 1, 1], n = r*e + c
    out = [
        summarize(model, cells[i : i + chunk], mag=0, norm=norm, tracker=tracker)
        for i in range(0, cells.shape[0], chunk)
    ]
    return torch.cat(out)
