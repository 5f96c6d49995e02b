"""The LDM "linear" diffusion schedule used by ZoomLDM (eps-prediction, T = 1000).

Numerics follow the official code exactly: betas = linspace(sqrt(start), sqrt(end), T)^2 in float64,
alphas_cumprod = cumprod(1 - betas) in float64, every buffer stored as float32.  ``q_sample`` uses
the float32 buffers, so it reproduces the official ``x_t`` bitwise.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# The 12 schedule buffers of the official LatentDiffusion state_dict, in state_dict order.
OFFICIAL_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def make_betas(
    timesteps: int = 1000,
    linear_start: float = 0.0015,
    linear_end: float = 0.0195,
    beta_schedule: str = "linear",
) -> torch.Tensor:
    """float64 betas of the LDM schedule (only "linear" is used by ZoomLDM)."""
    if beta_schedule != "linear":
        raise ValueError(f"beta_schedule {beta_schedule!r} is not supported (ZoomLDM uses 'linear')")
    return (
        torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64, device="cpu") ** 2
    )


def official_buffers(
    timesteps: int = 1000,
    linear_start: float = 0.0015,
    linear_end: float = 0.0195,
    beta_schedule: str = "linear",
) -> OrderedDict[str, torch.Tensor]:
    """The 12 float32 buffers exactly as the official ``register_schedule`` computes them (v_posterior 0)."""
    betas = make_betas(timesteps, linear_start, linear_end, beta_schedule)
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64, device="cpu"), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    out = OrderedDict(
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=ac.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
        log_one_minus_alphas_cumprod=(1.0 - ac).log(),
        sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
        sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1).sqrt(),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_var.clamp(min=1e-20).log(),
        posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    )
    return OrderedDict((k, v.to(torch.float32)) for k, v in out.items())


class Schedule(nn.Module):
    """Holds the schedule as non-persistent float32 buffers (they move with ``.to(device)``).

    ``beta_i = linspace(sqrt(linear_start), sqrt(linear_end), T)_i^2``,
    ``abar_i = prod_{j <= i} (1 - beta_j)`` (docs/generation.md, "Schedule and notation").
    """

    # the buffers registered by reset_buffers (declared for the type checker)
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor

    def __init__(
        self,
        *,
        timesteps: int = 1000,
        linear_start: float = 0.0015,
        linear_end: float = 0.0195,
        beta_schedule: str = "linear",
        parameterization: str = "eps",
        scale_factor: float = 1.0,
    ):
        super().__init__()
        if parameterization != "eps":
            raise ValueError(
                f"parameterization {parameterization!r} is not supported (ZoomLDM predicts 'eps')"
            )
        self.timesteps = int(timesteps)
        self.linear_start = float(linear_start)
        self.linear_end = float(linear_end)
        self.beta_schedule = beta_schedule
        self.scale_factor = float(scale_factor)
        self.reset_buffers()

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the buffers on the CPU and place them on ``device`` (after a meta-device build)."""
        bufs = official_buffers(self.timesteps, self.linear_start, self.linear_end, self.beta_schedule)
        for name in ("betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
            t = bufs[name]
            self.register_buffer(name, t if device is None else t.to(device), persistent=False)

    def official_buffers(self) -> OrderedDict[str, torch.Tensor]:
        return official_buffers(self.timesteps, self.linear_start, self.linear_end, self.beta_schedule)

    def _t(self, t: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        """Timesteps as LongTensor[batch] on ``device``; the range is checked where that needs no
        device sync (Python ints and CPU tensors)."""
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"timesteps must be integers in [0, {self.timesteps}), got dtype {t.dtype}")
        t = t.long().reshape(-1)
        if t.numel() == 1 and batch != 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {batch}")
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.timesteps}), got {sorted(set(t.tolist()))}")
        return t.to(device)

    def q_sample(self, z0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """sqrt(a_t) * z0 + sqrt(1 - a_t) * noise (official ``q_sample``, float32 buffers)."""
        if noise.shape != z0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(z0.shape)}")
        t = self._t(t, z0.shape[0], self.sqrt_alphas_cumprod.device)
        shape = (z0.shape[0],) + (1,) * (z0.ndim - 1)
        a = self.sqrt_alphas_cumprod.gather(-1, t).reshape(shape).to(z0.device)
        s = self.sqrt_one_minus_alphas_cumprod.gather(-1, t).reshape(shape).to(z0.device)
        return a.to(z0.dtype) * z0 + s.to(z0.dtype) * noise
