"""Large images: joint multi-scale sampling, the Gaussian-window large decode, seam post-processing.

docs/generation.md, "Joint multi-scale sampling", "Large decode", "Seam post-processing";
golden G3 (decode), G4 (joint loop), G5 (post-processing).

This module holds the joint sampler and the large decode; the seam post-processing is
``postprocess.py``, and the steps every loop shares (injected noise, tile/canvas layout, VQ round
trips, the strided schedule, x0hat, the noise step) are ``latent_steps.py``. The maths of all of
them is here.

**Joint multi-scale sampling** ([C] loop over [R] helpers; the "inexact Newton" constrained
sampling of [F]). A guide latent x^g at magnification index m_g (e = 2^m_g: 10x -> 2, 5x -> 4,
2.5x -> 8, 1.25x -> 16) and N = e^2 non-overlapping 20x tiles x_n (n = r e + c, row-major) move
in lockstep over t = t0, t0 - stride, ..., stride (S = t0 / stride steps). Per step, with
abar_t = abar[t-1], abar_p = abar[max(t-1-stride, 0)], btilde = beta[t-1](1-abar_p)/(1-abar_t)
(the UNet is fed t, the schedule indexed at t-1 [R]) and the guided eps of ``cfg_large``::

    x0hat(x) = x / sqrt(abar_t) - eps(x) sqrt((1 - abar_t) / abar_t)
    guide:   G = clamp(D(x0hat(x^g)), -1, 1), cut into N patches g_n of (256/e)^2 px
    tile n:  repeat K times (h = 0.005, lr = 0.5):
               I = D(x0hat)                       (decode, quantising, no clamp)
               r = up(g_n - down(I));       r <- r / max|r|            (per sample)
               dz = E(I + h r) - E(I);      dz <- dz / max|dz|          (VAE "Newton" step)
               d = (x0hat(x + h dz) - x0hat(x)) / h;   d <- d / max|d|  (finite-difference JVP)
               x <- x + lr d                                            (on the noisy x_t)
    noise:   x <- sqrt(abar_p) x0hat + sqrt(1 - abar_p [- btilde]) eps + sqrt(btilde) z

``down``/``up`` are the MATLAB bicubic resizers (``bicubic.py``) by 1/e and e. Nothing is
backpropagated. The noise term defaults to [C]'s sqrt(1 - abar_p) (``noise_term="c"``);
``"r"`` is the [R]/[F] sqrt(1 - abar_p - btilde) ("Open points and deviations" 1). Every operation is per sample,
so the result does not depend on ``batch_size`` (the memory bound).

**Large decode** ([R] ``decode_large_image``): 64x64 latent windows with stride 16, each
decoded (quantising) and blended with the Gaussian weight k(u, v) = exp(-(u^2 + v^2) / sigma^2)
on a linspace(-1, 1, 256)^2 grid (sigma = 0.8), ``out = sum k D(w) / sum k``; then
``uint8(clamp((out + 1) / 2, 0, 1) 255)`` (truncation). (H/16 - 3)(W/16 - 3) windows.

**Seam post-processing** ([R] ``postprocess_image``): re-noise the tiles to t0 = 300
(x = sqrt(abar[t0-1]) x + sqrt(1 - abar[t0-1]) z, tile layout), assemble the canvas; each window
(i, j) (latent px, stride 16) is conditioned on the slerp of the four neighbouring raw embeddings
of the replicate-padded grid (t1 = j/64 - j//64 horizontally, then t2 = i/64 - i//64 vertically;
lerp when |cos| > 0.9995), standardised without eps, at mag 0. For t = t0, t0 - stride, ... > 0:
x0hat per window, averaged over windows with uniform weights; eps = (x - sqrt(abar_t) x0hat) /
sqrt(1 - abar_t); x <- sqrt(abar_p) x0hat + sqrt(1 - abar_p - btilde) eps + sqrt(btilde) z (canvas
layout). The official code runs it on the *live* weights and in one UNet batch of 2W; zoomfeat
takes the model as given (EMA by default, live for parity) and chunks the windows.

Tags: [R] decode, post-processing, model_pred, resizer; [C] joint loop; [I] chunking, the
``ssl_norm`` default ("Open points and deviations" 4), noise injection as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zoomfeat.generation.bicubic import Resizer
from zoomfeat.generation.costs import Tracker
from zoomfeat.generation.guidance import model_pred, pool_grid, summarize, tile_contexts
from zoomfeat.generation.latent_steps import (
    LATENT,
    Noise,
    RecordedNoise,
    StepCoefs,
    canvas_to_tiles,
    decode,
    encode,
    noise_step,
    per_sample_maxabs,
    step_coefs,
    tiles_to_canvas,
    to_uint8,
    window_positions,
    x0hat,
)
from zoomfeat.model.callbacks import StepCallback, StepState, within
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.units import MagIndex

#: guide magnification index -> grid side e (tiles per side)
GUIDE_MAGS = {1: 2, 2: 4, 3: 8, 4: 16}
NOISE_TERMS = ("c", "r")


# ----------------------------------------------------------------------------------------------
# large decode


def gaussian_kernel(size: int = 256, sigma: float = 0.8) -> torch.Tensor:
    """The blending weight k(u, v) = exp(-(u^2 + v^2) / sigma^2) on a linspace(-1, 1, size)^2 grid,
    divided by its maximum [R] (docs/generation.md, "Large decode")."""
    v = torch.linspace(-1, 1, size)
    grid = torch.stack((v.tile(size, 1), v.tile(size, 1).T), dim=0)
    d = torch.linalg.norm(grid, dim=0)
    k = torch.exp(-(d**2) / sigma**2)
    return k / k.max()


def decode_large(
    model: Any,
    latent: torch.Tensor,
    *,
    window_stride: int = 16,
    sigma: float = 0.8,
    batch_size: int = 16,
    tracker: Tracker | None = None,
    return_canvas: bool = False,
    callback: StepCallback | None = None,
) -> Any:
    """Official ``decode_large_image``: Gaussian-blended 64x64 window decodes of [B, 3, H, W].

    docs/generation.md, "Large decode"::

        out = sum_w k_w D(z_w) / sum_w k_w,   k(u, v) = exp(-(u^2 + v^2) / sigma^2) on [-1, 1]^2
        img = uint8(clamp((out + 1) / 2, 0, 1) 255)                      (truncation)

    Windows are decoded ``batch_size`` at a time (the result does not depend on it) and
    accumulated in row-major order. Returns uint8 [B, 4H, 4W, 3] (and the float canvas before the
    clamp when ``return_canvas``). ``callback(k, 0, state)`` after the k-th batch of windows: stage
    ``"decode"``, ``latents`` = the batch's windows [n B, 3, 64, 64], ``tensors["decoded"]`` their
    decodes.
    """
    b, c, h, w = latent.shape
    pos = window_positions(h, w, LATENT, window_stride)
    f = model.image_size // model.latent_size
    win_px = LATENT * f
    k = gaussian_kernel(win_px, sigma).to(latent.device)
    out = torch.zeros(b, 3, h * f, w * f, device=latent.device)
    avg = torch.zeros(1, 1, h * f, w * f, device=latent.device)
    for step, s in enumerate(range(0, len(pos), batch_size)):
        chunk = pos[s : s + batch_size]
        z = torch.cat([latent[:, :, i : i + LATENT, j : j + LATENT] for i, j in chunk])
        dec = decode(model, z, tracker).to(latent.device).reshape(len(chunk), b, 3, win_px, win_px)
        for n, (i, j) in enumerate(chunk):
            out[:, :, i * f : i * f + win_px, j * f : j * f + win_px] += dec[n] * k
            avg[:, :, i * f : i * f + win_px, j * f : j * f + win_px] += k
        if callback is not None:
            callback(step, 0, StepState("decode", z, tensors={"decoded": dec}))
    canvas = out / avg
    img = to_uint8(canvas)
    return (img, canvas) if return_canvas else img


# ----------------------------------------------------------------------------------------------
# joint multi-scale sampling


@dataclass(kw_only=True)
class JointOptions:
    """Defaults of the [C] joint notebook (docs/generation.md, "Joint multi-scale sampling"); ``noise_term`` c = [C], r = [R]/[F]."""

    t0: int = 1000
    stride: int = 50
    n_steps: int = 10
    h: float = 0.005
    lr: float = 0.5
    guidance: float = 2.0
    batch_size: int = 16
    noise_term: str = "c"
    t_offset: int = 0

    def __post_init__(self):
        if self.noise_term not in NOISE_TERMS:
            raise ConfigError(
                f"noise_term={self.noise_term!r}: use 'c' (sqrt(1-abar_p)) or 'r' (minus btilde)"
            )
        if self.n_steps < 0 or self.batch_size < 1 or self.h <= 0:
            raise ConfigError("n_steps must be >= 0, batch_size >= 1 and h > 0")


def constrained_tiles(
    model: Any,
    x: torch.Tensor,
    *,
    conds: torch.Tensor,
    targets: torch.Tensor,
    coefs: StepCoefs,
    opts: JointOptions,
    down: Resizer,
    up: Resizer,
    tracker: Tracker | None = None,
    callback: StepCallback | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The constraint iterations of one step for a chunk of tiles; returns (x, x0hat, eps).

    docs/generation.md, "Joint multi-scale sampling". With eps(x) the guided eps of
    :func:`~zoomfeat.generation.guidance.model_pred` and x0hat(x) = x / sqrt(abar_t) - eps(x)
    sqrt((1 - abar_t) / abar_t), K = ``opts.n_steps`` times::

        I  = D(x0hat(x));   z = E(I)
        r  = up(g - down(I));               r  <- r / max|r|      (per sample)
        dz = E(I + h r) - z;                dz <- dz / max|dz|
        d  = (x0hat(x + h dz) - x0hat(x)) / h;  d <- d / max|d|
        x  <- x + lr d

    ``targets``: the low-resolution patches g [b, 3, 256/e, 256/e] the tiles must match.
    ``callback(k, t, state)`` after each iteration k: stage ``"constraint"``, ``latents`` = the
    updated x, ``x0hat`` and ``eps`` at it, ``tensors`` = ``x0hat_in`` (the iteration's starting
    x0hat), ``z``, ``r``, ``dz``, ``d`` (normalised) and ``maxabs_r``, ``maxabs_dz``, ``maxabs_d``
    (the norms they were divided by).
    """
    w, h, t = opts.guidance, opts.h, coefs.t

    def pred(xx: torch.Tensor) -> torch.Tensor:
        return model_pred(model, xx, t=t, context=conds, w=w, t_offset=opts.t_offset, tracker=tracker)

    eps = pred(x)
    x0 = x0hat(x, eps, coefs.at)
    for k in range(opts.n_steps):
        img = decode(model, x0, tracker)
        z = encode(model, img, tracker)
        r = up(targets - down(img))
        mr = per_sample_maxabs(r)
        r = r / mr
        dz = encode(model, img + h * r, tracker) - z
        mdz = per_sample_maxabs(dz)
        dz = dz / mdz
        x1 = x + h * dz
        x01 = x0hat(x1, pred(x1), coefs.at)
        d = (x01 - x0) / h
        md = per_sample_maxabs(d)
        d = d / md
        x = x + opts.lr * d
        x0_in = x0
        eps = pred(x)
        x0 = x0hat(x, eps, coefs.at)
        if callback is not None:
            named = {"x0hat_in": x0_in, "z": z, "r": r, "dz": dz, "d": d}
            named.update(maxabs_r=mr, maxabs_dz=mdz, maxabs_d=md)
            callback(k, t, StepState("constraint", x, x0hat=x0, eps=eps, tensors=named))
    return x, x0, eps


@dataclass
class JointResult:
    tiles: torch.Tensor  # final 20x state, tile layout [N, 3, 64, 64]
    guide: torch.Tensor  # final guide latent [1, 3, 64, 64]
    e: int

    @property
    def canvas(self) -> torch.Tensor:
        return tiles_to_canvas(self.tiles, self.e)


def guide_grid_side(mag: int) -> int:
    if mag not in GUIDE_MAGS:
        names = ", ".join(f"{m} ({20 / 2**m:g}x)" for m in GUIDE_MAGS)
        raise ConfigError(f"guide magnification index {mag} is not supported; use one of {names}")
    return GUIDE_MAGS[mag]


def joint_sample(
    model: Any,
    ssl_grid: torch.Tensor,
    *,
    guide_mag: MagIndex,
    opts: JointOptions | None = None,
    noise: Noise | None = None,
    ssl_norm: str = "dataloader",
    tracker: Tracker | None = None,
    callback: StepCallback | None = None,
) -> JointResult:
    """Joint multi-scale sampling of a (256 e)^2 20x image under one guide patch.

    docs/generation.md, "Joint multi-scale sampling". Per step t (abar_t, abar_p, btilde of
    :func:`~zoomfeat.generation.latent_steps.step_coefs`)::

        guide:  eps_g = eps(x^g);  x0_g = x0hat(x^g);  G = clamp(D(x0_g), -1, 1) -> patches g_n
        tiles:  (x_n, x0_n, eps_n) = constrained_tiles(x_n, g_n)       (K constraint iterations)
        noise:  x <- sqrt(abar_p) x0 + sqrt(1 - abar_p [- btilde]) eps + sqrt(btilde) z
                (both scales; the bracket is ``opts.noise_term = "r"``)

    Args:
        model: ``ZoomLDM`` (EMA weights, as the official ``model_pred``).
        ssl_grid: the unpooled 20x SSL (UNI) grid of the guide region, [C, e, e].
        guide_mag: magnification index of the guide (1 = 10x ... 4 = 1.25x), e = 2^guide_mag.
        opts: loop settings (:class:`JointOptions`).
        noise: the source of x_T20x, x_Tg, then per step z20x_s{k}, zg_s{k} (in that order).
        ssl_norm: ``"raw"`` (the [C] notebook, for parity) or ``"dataloader"`` (per-position
            standardisation; the guide grid pooled to 8x8 first) [I], see ``guidance.py``.
        callback: ``callback(s, t, state)`` after every step s: stage ``"joint"``, ``latents`` =
            the 20x tiles after the noise step, ``x0hat``/``eps`` of the tiles before it,
            ``noise`` = z20x; ``tensors``: ``guide`` (x^g after the step), ``guide_x0hat``,
            ``guide_eps``, ``guide_noise``, ``guide_image`` (G), ``cond_tiles``, ``cond_guide``.
            The constraint iterations report too (stage ``"constraint"``, see
            :func:`constrained_tiles`) with ``outer = {"step": s, "first_tile": n0}``.
    """
    opts = opts or JointOptions()
    noise = noise or Noise(device=model.device)
    e = guide_grid_side(int(guide_mag))
    if ssl_grid.ndim != 3 or tuple(ssl_grid.shape[1:]) != (e, e):
        raise ConfigError(
            f"a {20 / 2**guide_mag:g}x guide needs a [C, {e}, {e}] 20x SSL grid, got {tuple(ssl_grid.shape)}"
        )
    dev = model.device
    n = e * e
    ssl_grid = ssl_grid.float().to(dev)
    cond_tiles = tile_contexts(model, ssl_grid, norm=ssl_norm, tracker=tracker)
    cond_guide = summarize(model, pool_grid(ssl_grid[None]), mag=guide_mag, norm=ssl_norm, tracker=tracker)
    lat = model.latent_size
    px = model.image_size
    p = px // e
    down = Resizer((1, 3, px, px), 1 / e)
    up = Resizer((1, 3, p, p), e)
    x = noise("x_T20x", (n, 3, lat, lat)).to(dev)
    xg = noise("x_Tg", (1, 3, lat, lat)).to(dev)
    for s, c in enumerate(step_coefs(model, opts.t0, opts.stride)):
        eps_g = model_pred(
            model, xg, t=c.t, context=cond_guide, w=opts.guidance, t_offset=opts.t_offset, tracker=tracker
        )
        x0_g = x0hat(xg, eps_g, c.at)
        guide_img = torch.clamp(decode(model, x0_g, tracker), -1, 1)
        targets = canvas_to_tiles(guide_img, e)  # [N, 3, p, p], row-major
        x0_all, eps_all = [], []
        for start in range(0, n, opts.batch_size):
            sl = slice(start, start + opts.batch_size)
            _, x0c, epsc = constrained_tiles(
                model,
                x[sl],
                conds=cond_tiles[sl],
                targets=targets[sl],
                coefs=c,
                opts=opts,
                down=down,
                up=up,
                tracker=tracker,
                callback=within(callback, step=s, first_tile=start),
            )
            x0_all.append(x0c)
            eps_all.append(epsc)
        x0_t, eps_t = torch.cat(x0_all), torch.cat(eps_all)
        z20 = noise(f"z20x_s{s}", tuple(x.shape)).to(dev)
        zg = noise(f"zg_s{s}", tuple(xg.shape)).to(dev)
        x = noise_step(x0_t, eps_t, z=z20, coefs=c, noise_term=opts.noise_term)
        xg = noise_step(x0_g, eps_g, z=zg, coefs=c, noise_term=opts.noise_term)
        if callback is not None:
            named = {"guide": xg, "guide_x0hat": x0_g, "guide_eps": eps_g, "guide_noise": zg}
            named.update(guide_image=guide_img, cond_tiles=cond_tiles, cond_guide=cond_guide)
            callback(s, c.t, StepState("joint", x, x0hat=x0_t, eps=eps_t, noise=z20, tensors=named))
    return JointResult(tiles=x, guide=xg, e=e)


# Noise, RecordedNoise and the layout helpers live in latent_steps.py; they stay importable from
# here, where tests/generation imports them.
__all__ = [
    "GUIDE_MAGS",
    "JointOptions",
    "JointResult",
    "Noise",
    "RecordedNoise",
    "canvas_to_tiles",
    "decode_large",
    "gaussian_kernel",
    "joint_sample",
    "tiles_to_canvas",
    "window_positions",
]
