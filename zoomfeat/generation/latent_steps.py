"""The steps the large-image samplers share: injected noise, tile/canvas layout, VQ round trips,
the strided schedule, x0hat and the noise step.

docs/generation.md, "x0-hat and the noise step"; golden G4 (joint loop), G5 (post-processing). Used by the joint
sampler and the large decode (``large.py``), super-resolution (``superres.py``), the seam
post-processing (``postprocess.py``) and patch sampling (``patch.py``); their maths is in
``large.py``'s header.

**Schedule** [R]: the loops run t = t0, t0 - stride, ..., > 0 (S = t0 / stride steps). The UNet is
fed t while the schedule is indexed at t-1, as the official code::

    abar_t = abar[t-1],   abar_p = abar[max(t-1-stride, 0)],   btilde = beta[t-1] (1-abar_p)/(1-abar_t)
    x0hat(x) = x / sqrt(abar_t) - eps sqrt((1 - abar_t) / abar_t)
    next x   = sqrt(abar_p) x0hat + sqrt(1 - abar_p [- btilde]) eps + sqrt(btilde) z

The bracketed btilde is the noise-term choice: ``"c"`` drops it ([C]'s joint notebook),
``"r"`` keeps it ([R]/[F]; "Open points and deviations" 1). Coefficients are float32 on the CPU, moved to the
tensor's device when used.

**Layout**: N = e^2 tiles in row-major order (n = r e + c) form an e x e canvas,
``(b p1 p2) c h w <-> b c (p1 h) (p2 w)``; windows of 64 latent px (one tile) slide over a
canvas with stride 16, row-major over i then j. **Normalisation**: the constrained steps divide
by the per-sample max |x| with no epsilon, as the official code. **VQ**: decoding quantises and
does not clamp; encoding does not quantise; images become uint8 by ``uint8(clamp((x+1)/2, 0, 1)
255)`` (truncation, not rounding). Each VQ call is counted on the :class:`Tracker` when given.

**Randomness** [I]: every draw is a named argument (``noise(role, shape)``), so a run can replay
recorded draws (golden tests) or use its own generator; roles are listed by each sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from zoomfeat.generation.costs import Tracker
from zoomfeat.runtime.errors import ConfigError

LATENT = 64  # latent side of one tile / window


# ----------------------------------------------------------------------------------------------
# randomness: every draw is an injectable, named argument


class Noise:
    """Draws named standard-normal tensors: ``noise(role, shape) -> Tensor`` (float32, on ``device``)."""

    def __init__(self, generator: torch.Generator | None = None, device: str | torch.device = "cpu"):
        self.generator = generator
        self.device = torch.device(device)

    def __call__(self, role: str, shape: tuple[int, ...]) -> torch.Tensor:
        dev = self.generator.device if self.generator is not None else self.device
        return torch.randn(shape, generator=self.generator, device=dev, dtype=torch.float32).to(self.device)


class RecordedNoise(Noise):
    """Noise from a mapping of role -> tensor (golden replay); a missing role or shape is an error."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], names: Callable[[str], str] | None = None):
        super().__init__()
        self.tensors = tensors
        self.names = names or (lambda r: r)

    def __call__(self, role: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = self.names(role)
        if key not in self.tensors:
            raise KeyError(f"no recorded noise for {role!r} (looked up {key!r})")
        t = self.tensors[key].float()
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"recorded noise {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return t


# ----------------------------------------------------------------------------------------------
# layout helpers


def tiles_to_canvas(x: torch.Tensor, e: int) -> torch.Tensor:
    """``(b p1 p2) c h w -> b c (p1 h) (p2 w)``: tile n = r e + c goes to grid cell (r, c)."""
    n, c, h, w = x.shape
    b = n // (e * e)
    return x.reshape(b, e, e, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, e * h, e * w)


def canvas_to_tiles(x: torch.Tensor, e: int) -> torch.Tensor:
    """Inverse of :func:`tiles_to_canvas`."""
    b, c, hh, ww = x.shape
    h, w = hh // e, ww // e
    return x.reshape(b, c, e, h, e, w).permute(0, 2, 4, 1, 3, 5).reshape(b * e * e, c, h, w)


def window_positions(h: int, w: int, window: int = LATENT, stride: int = 16) -> list[tuple[int, int]]:
    """Top-left corners (i, j), row-major over i then j: ``range(0, H - window + 1, stride)``."""
    if h < window or w < window or h % stride or w % stride:
        raise ConfigError(
            f"a large latent must be at least {window} px and a multiple of {stride}, got {h}x{w}"
        )
    return [(i, j) for i in range(0, h - window + 1, stride) for j in range(0, w - window + 1, stride)]


def per_sample_maxabs(x: torch.Tensor) -> torch.Tensor:
    """The per-sample infinity norm ``max_i |x_b,i|`` [B, 1, 1, 1] (no epsilon, as the official code)."""
    return x.abs().amax(dim=tuple(range(1, x.ndim)), keepdim=True)


def decode(model, z: torch.Tensor, tracker: Tracker | None = None) -> torch.Tensor:
    """VQ decode with quantisation, no clamp, no gradient.

    Args:
        z: latents [B, 3, h, w]. tracker: counts B decodes when given.

    Returns:
        Images [B, 3, f h, f w] (f: the VQ's downsampling factor, 4 for VQ-f4) in about [-1, 1],
        float32.
    """
    if tracker is not None:
        tracker.decode(z.shape[0])
    with torch.no_grad():
        return model.decode(z, quantize=True).float()


def encode(model, img: torch.Tensor, tracker: Tracker | None = None) -> torch.Tensor:
    """VQ encode without quantisation, no gradient.

    Args:
        img: images [B, 3, H, W] in [-1, 1]. tracker: counts B encodes when given.

    Returns:
        Latents [B, 3, H/f, W/f], float32.
    """
    if tracker is not None:
        tracker.encode(img.shape[0])
    with torch.no_grad():
        return model.encode(img).float()


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] by truncation, as the official code:
    ``uint8(floor(clamp((x + 1) / 2, 0, 1) 255))``."""
    x = torch.clamp((img.float() + 1.0) / 2.0, 0.0, 1.0)
    return (x * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------------------------
# schedule of the large-image loops


@dataclass(frozen=True)
class StepCoefs:
    """One step's timestep and its 0-d float32 CPU coefficients (see the module header)."""

    t: int
    at: torch.Tensor  # abar[t-1]
    ap: torch.Tensor  # abar[max(t-1-stride, 0)]
    bt: torch.Tensor  # beta[t-1] (1 - ap) / (1 - at)


def step_coefs(model, t0: int, stride: int) -> list[StepCoefs]:
    """The large-image schedule t = t0, t0 - stride, ..., > 0 with the official t-1 indexing::

    abar_t = abar[t-1],  abar_p = abar[max(t-1-stride, 0)],  btilde = beta[t-1] (1-abar_p)/(1-abar_t)
    """
    if not (0 < stride <= t0 <= model.schedule.timesteps):
        raise ConfigError(f"need 0 < stride <= t0 <= {model.schedule.timesteps}, got t0={t0} stride={stride}")
    ac = model.schedule.alphas_cumprod.detach().cpu().float()
    betas = model.schedule.betas.detach().cpu().float()
    out = []
    for t in range(t0, 0, -stride):
        at, ap = ac[t - 1], ac[max(t - 1 - stride, 0)]
        out.append(StepCoefs(t, at, ap, betas[t - 1] * (1 - ap) / (1 - at)))
    return out


def x0hat(x: torch.Tensor, eps: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The clean-latent estimate (docs/generation.md, "x0-hat and the noise step")::

    x0hat = x / sqrt(abar_t) - eps sqrt((1 - abar_t) / abar_t)        (float32)
    """
    at = at.to(x.device)
    return x / at.sqrt() - eps * ((1 - at) / at).sqrt()


def noise_step(
    x0: torch.Tensor, eps: torch.Tensor, *, z: torch.Tensor, coefs: StepCoefs, noise_term: str
) -> torch.Tensor:
    """The stochastic step to t - stride (docs/generation.md, "The noise step")::

        x' = sqrt(abar_p) x0 + sqrt(1 - abar_p [- btilde]) eps + sqrt(btilde) z

    ``noise_term="c"`` leaves the bracket out ([C]), ``"r"`` keeps it ([R]/[F]).
    """
    ap, bt = coefs.ap.to(x0.device), coefs.bt.to(x0.device)
    dir_coef = (1 - ap).sqrt() if noise_term == "c" else (1 - ap - bt).sqrt()
    return ap.sqrt() * x0 + dir_coef * eps + bt.sqrt() * z
