"""Super-resolution of a real low-magnification image: condition inversion + constrained sampling.

docs/generation.md, "Condition inversion" and "Super-resolution"; golden G6 (inversion). The input is one real 256^2 RGB patch at magnification
index m (5x: e = 4, a 4x super-resolution to 1024^2), mapped to 2 (x/255 - 0.5); no SSL features
are needed, they are inferred.

**Condition inversion** ([C] glue over [R] functions). Optimise an e x e grid F [C, e, e]
(F_0 ~ N(0, 1)) with Adam (lr 0.1) so that the LDM explains the LR latent z = E(lr) (pre-quant)::

    t_i = int(linspace(950, 50, I)_i);   abar = abar[t - 1];   eps ~ N(0, 1)
    x_t = sqrt(abar) z + sqrt(1 - abar) eps
    Ft  = (F - mean_c F) / std_c F                      (per position, unbiased, no eps)
    eps_theta = UNet(x_t, t, Summarizer(Ft, m))        (no CFG; the UNet is fed t)
    L = mean(sqrt(abar) (1 - abar) (eps_theta - eps)^2) - 0.05 mean_{p,q} cos(F_p, F_q)

The second term (cosine similarity of the raw columns, all e^2 x e^2 pairs, diagonal included)
rewards coherent positions. Gradients reach only F here (the model is frozen; the official code
lets them reach the unfrozen UNet too, which changes nothing but memory). The [C] notebook runs on
the *live* weights; pass a model loaded with ``ema=False`` for parity, EMA is the default [I].
The 20x conditions: standardise F, split it into e^2 1x1 grids (row-major), summarize at mag 0.

**Constrained sampling** ([I]: [C]'s own loop cannot run, its shapes are wrong). The joint
tile loop of ``large.py`` with the guide replaced by the fixed LR image: g_n = the n-th
(256/e)^2 patch of the LR image; defaults t0 = 1000, stride 50, w = 2, K = 5, lr = 0.5, h = 0.005,
batch 2; noise sqrt(1 - abar_p) + sqrt(btilde) z; x_T ~ N(0, 1) drawn after the inversion. Then the
large decode (and optionally the seam post-processing with ssl_grid = F).

**1.25x input** [I]: the 16x16 inverted grid cannot enter the summarizer (at most 8x8), so only
e <= 8 (10x, 5x, 2.5x) is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zoomfeat.generation.bicubic import Resizer
from zoomfeat.generation.costs import Tracker
from zoomfeat.generation.guidance import standardise, tile_contexts, unet_eps
from zoomfeat.generation.large import JointOptions, constrained_tiles, guide_grid_side
from zoomfeat.generation.latent_steps import Noise, canvas_to_tiles, encode, noise_step, step_coefs
from zoomfeat.model.callbacks import StepCallback, StepState, within
from zoomfeat.runtime.errors import ConfigError, InputError
from zoomfeat.runtime.units import MagIndex

#: magnification indices super-resolution accepts (e <= 8)
SUPERRES_MAGS = (1, 2, 3)


@dataclass(kw_only=True)
class InversionOptions:
    steps: int = 200
    lr: float = 0.1
    t_max: int = 950
    t_min: int = 50
    sim_weight: float = 0.05
    t_offset: int = 0
    #: stop after this many of the ``steps`` updates (None: all); for debugging and tests
    stop_after: int | None = None


@dataclass
class InversionResult:
    F: torch.Tensor  # the raw optimised grid [C, e, e]
    contexts: torch.Tensor  # per-tile 20x contexts [N, 65, D]


def image_to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 HWC (or [1, H, W, 3]) -> float [1, 3, H, W] in [-1, 1] as 2 (x/255 - 0.5)."""
    x = torch.as_tensor(np.asarray(image))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise InputError(f"expected an RGB uint8 image (H, W, 3), got {tuple(x.shape)} {x.dtype}")
    return 2 * (x.permute(0, 3, 1, 2).float() / 255 - 0.5)


def inversion_timesteps(opts: InversionOptions) -> list[int]:
    return [int(v) for v in np.linspace(opts.t_max, opts.t_min, opts.steps)]


def invert_condition(
    model: Any,
    lr_image: torch.Tensor,
    *,
    mag: MagIndex,
    opts: InversionOptions | None = None,
    noise: Noise | None = None,
    tracker: Tracker | None = None,
    callback: StepCallback | None = None,
) -> InversionResult:
    """Condition inversion: the SSL grid F [C, e, e] that explains ``lr_image``.

    docs/generation.md, "Condition inversion". Adam (lr ``opts.lr``) on F from F_0 ~ N(0, I),
    one step per t_i = int(linspace(t_max, t_min, I)_i)::

        x_t = sqrt(abar) z + sqrt(1 - abar) eps,   z = E(lr_image),  abar = abar[t - 1]
        L   = mean(sqrt(abar) (1 - abar) (eps_theta(x_t, t, S(std(F), m)) - eps)^2)
              - 0.05 mean_{p,q} cos(F_p, F_q)

    ``lr_image``: [1, 3, 256, 256] in [-1, 1]. ``noise``: source of ``F0`` [C, e, e] then
    ``eps_s{i}`` [1, 3, 64, 64]. ``callback(i, t, state)`` after each Adam step: stage
    ``"inversion"``, ``latents`` = F after the step (a copy), ``eps`` = the UNet's prediction,
    ``noise`` = the eps drawn; ``tensors``: ``loss``, ``loss_mse``, ``loss_sim``, ``grad``
    (dL/dF), ``abar_t``.
    """
    opts = opts or InversionOptions()
    if int(mag) not in SUPERRES_MAGS:
        raise ConfigError(
            f"super-resolution input magnification index {mag}: use 1 (10x), 2 (5x) or 3 (2.5x)"
        )
    e = guide_grid_side(int(mag))
    dev = model.device
    noise = noise or Noise(device=dev)
    z = encode(model, lr_image.to(dev), tracker)
    ac = model.schedule.alphas_cumprod.detach().cpu().float()
    F = noise("F0", (model.ssl_channels, e, e)).to(dev).clone().requires_grad_(True)
    optim = torch.optim.Adam([F], lr=opts.lr)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for i, t in enumerate(inversion_timesteps(opts)[: opts.stop_after]):
            at = ac[t - 1].to(dev)
            eps = noise(f"eps_s{i}", tuple(z.shape)).to(dev)
            xt = at.sqrt() * z + (1 - at).sqrt() * eps
            Ft = standardise(F[None], "noeps")
            cond = model.summarizer(Ft, torch.tensor([int(mag)], device=dev))
            tt = torch.full((1,), float(t - opts.t_offset))
            pred = unet_eps(model, xt, tt, cond).float()
            if tracker is not None:
                tracker.unet(1, backward=True)
                tracker.summarizer(1)
            mse = torch.mean(at.sqrt() * (1 - at) * (pred - eps) ** 2)
            cols = F.reshape(F.shape[0], -1).T
            cols = cols / cols.norm(dim=1, keepdim=True)
            sim = -opts.sim_weight * torch.mean(cols @ cols.T)
            loss = mse + sim
            optim.zero_grad()
            loss.backward()
            optim.step()
            if callback is not None:
                assert F.grad is not None
                named = {"loss": loss.detach(), "loss_mse": mse.detach(), "loss_sim": sim.detach()}
                named.update(grad=F.grad.detach().clone(), abar_t=at)
                state = StepState(
                    "inversion", F.detach().clone(), eps=pred.detach(), noise=eps, tensors=named
                )
                callback(i, t, state)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    Fd = F.detach()
    ctx = tile_contexts(model, Fd, norm="noeps", tracker=tracker)
    return InversionResult(F=Fd, contexts=ctx)


def constrained_superres(
    model: Any,
    lr_image: torch.Tensor,
    *,
    contexts: torch.Tensor,
    opts: JointOptions | None = None,
    noise: Noise | None = None,
    tracker: Tracker | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Constrained sampling [I]: N = e^2 20x tiles whose downsampling matches the LR image.

    docs/generation.md, "Super-resolution": the joint sampler's tile loop
    (:func:`~zoomfeat.generation.large.constrained_tiles`) with the guide patches g_n replaced by
    the patches of the fixed LR image, then the noise step
    x <- sqrt(abar_p) x0 + sqrt(1 - abar_p [- btilde]) eps + sqrt(btilde) z.

    ``noise``: source of ``x_T20x`` [N, 3, 64, 64] then ``z20x_s{k}``. ``callback(s, t, state)``
    after every step: stage ``"superres"``, ``latents`` = the tiles after the noise step,
    ``x0hat``/``eps`` before it, ``noise`` = z; the constraint iterations report as stage
    ``"constraint"`` with ``outer = {"step": s, "first_tile": n0}``. Returns the tiles
    [N, 3, 64, 64].
    """
    opts = opts or JointOptions(n_steps=5, batch_size=2)
    n = contexts.shape[0]
    e = int(round(n**0.5))
    dev = model.device
    noise = noise or Noise(device=dev)
    px, lat = model.image_size, model.latent_size
    if tuple(lr_image.shape) != (1, 3, px, px):
        raise InputError(f"the low-resolution image must be {px}x{px} RGB, got {tuple(lr_image.shape)}")
    p = px // e
    down = Resizer((1, 3, px, px), 1 / e)
    up = Resizer((1, 3, p, p), e)
    targets = canvas_to_tiles(lr_image.to(dev).float(), e)
    x = noise("x_T20x", (n, 3, lat, lat)).to(dev)
    for s, c in enumerate(step_coefs(model, opts.t0, opts.stride)):
        x0s, epss = [], []
        for start in range(0, n, opts.batch_size):
            sl = slice(start, start + opts.batch_size)
            _, x0c, epsc = constrained_tiles(
                model,
                x[sl],
                conds=contexts[sl].to(dev),
                targets=targets[sl],
                coefs=c,
                opts=opts,
                down=down,
                up=up,
                tracker=tracker,
                callback=within(callback, step=s, first_tile=start),
            )
            x0s.append(x0c)
            epss.append(epsc)
        z = noise(f"z20x_s{s}", tuple(x.shape)).to(dev)
        x0_t, eps_t = torch.cat(x0s), torch.cat(epss)
        x = noise_step(x0_t, eps_t, z=z, coefs=c, noise_term=opts.noise_term)
        if callback is not None:
            callback(s, c.t, StepState("superres", x, x0hat=x0_t, eps=eps_t, noise=z))
    return x
