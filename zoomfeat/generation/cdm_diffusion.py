"""The CDM's diffusion: cosine schedule, respacing, x0-prediction with learned variance, DDIM.

The maths is in :mod:`zoomfeat.generation.cdm` ("Diffusion") and docs/generation.md, "CDM"; golden G7.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from zoomfeat.generation.costs import Tracker
from zoomfeat.model.callbacks import StepCallback, StepState
from zoomfeat.runtime.errors import ConfigError

# diffusion (float64 NumPy arrays, as the official code)


def cosine_betas(steps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - abar((i + 1) / steps) / abar(i / steps), max_beta) for i in range(steps)], dtype=np.float64
    )


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The kept steps of respacing ``str(count)`` (one section): round(k (T-1)/(count-1)) [R]."""
    if not 1 <= count <= num_timesteps:
        raise ConfigError(f"CDM respacing must lie in [1, {num_timesteps}], got {count}")
    if count == 1:
        return [0]
    stride = (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return sorted(set(taken))


def _extract(arr: np.ndarray, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.from_numpy(arr).to(t.device)[t].float()
    return out.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)


class CDMDiffusion:
    """Gaussian diffusion with x0-prediction and learned-range variance, optionally respaced."""

    def __init__(
        self, betas: np.ndarray | None = None, respacing: int | None = None, num_timesteps: int = 1000
    ):
        base = cosine_betas(num_timesteps) if betas is None else np.asarray(betas, dtype=np.float64)
        self.timestep_map = np.arange(len(base))
        if respacing is not None:
            keep = space_timesteps(len(base), int(respacing))
            ac = np.cumprod(1.0 - base)
            last, new = 1.0, []
            for i, a in enumerate(ac):
                if i in keep:
                    new.append(1 - a / last)
                    last = a
            base = np.array(new, dtype=np.float64)
            self.timestep_map = np.array(keep)
        self.betas = base
        self.num_timesteps = len(base)
        b = base
        alphas = 1.0 - b
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        ac, acp = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        pv = b * (1.0 - acp) / (1.0 - ac)
        self.posterior_variance = pv
        self.posterior_log_variance_clipped = (
            np.log(np.append(pv[1], pv[1:])) if len(pv) > 1 else np.array([])
        )
        self.posterior_mean_coef1 = b * np.sqrt(acp) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - acp) * np.sqrt(alphas) / (1.0 - ac)

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """The original timestep the model receives for respaced index ``t`` (int64)."""
        return torch.as_tensor(self.timestep_map, device=t.device, dtype=torch.long)[t]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (
            _extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        mean = (
            _extract(self.posterior_mean_coef1, t, xt.shape) * x0
            + _extract(self.posterior_mean_coef2, t, xt.shape) * xt
        )
        return mean, _extract(self.posterior_log_variance_clipped, t, xt.shape)

    def p_mean_variance(
        self, out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        c = xt.shape[1]
        x0, v = torch.split(out, c, dim=1)
        min_log = _extract(self.posterior_log_variance_clipped, t, xt.shape)
        max_log = _extract(np.log(self.betas), t, xt.shape)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        mean, _ = self.q_posterior(x0, xt, t)
        return {"mean": mean, "log_variance": log_var, "pred_xstart": x0}

    def training_losses(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *,
        t: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The official loss, one model call: loss = mse + vb (docs/generation.md, "CDM")::

        x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise;   (x0hat, v) = f(x_t, t, y)
        mse = mean((x0 - x0hat)^2)
        vb  = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) / log 2  (t > 0), decoder NLL (t = 0)
        log sigma^2 = (v + 1)/2 log beta_t + (1 - (v + 1)/2) log btilde_t   (x0hat detached in vb)
        """
        xt = self.q_sample(x0, t, noise)
        out = model(xt, self.model_t(t), y)
        c = xt.shape[1]
        pred, var = torch.split(out, c, dim=1)
        frozen = torch.cat([pred.detach(), var], dim=1)
        vb = self._vb_bpd(frozen, x0, xt, t)
        mse = ((x0 - pred) ** 2).mean(dim=tuple(range(1, x0.ndim)))
        return {"loss": mse + vb, "mse": mse, "vb": vb, "x_t": xt, "model_output": out}

    def _vb_bpd(self, out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        true_mean, true_logvar = self.q_posterior(x0, xt, t)
        p = self.p_mean_variance(out, xt, t)
        kl = normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"])
        kl = kl.mean(dim=tuple(range(1, x0.ndim))) / np.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        nll = nll.mean(dim=tuple(range(1, x0.ndim))) / np.log(2.0)
        return torch.where(t == 0, nll, kl)

    @torch.no_grad()
    def ddim_sample(
        self,
        model: Callable[..., torch.Tensor],
        z: torch.Tensor,
        *,
        y: torch.Tensor,
        tracker: Tracker | None = None,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """DDIM (eta 0, no clipping) from noise ``z`` over all (respaced) steps, high to low::

            x0hat = f(x_t, t, y)[:C];   eps = (sqrt(1/abar_t) x_t - x0hat) / sqrt(1/abar_t - 1)
            x_{t-1} = sqrt(abar_{t-1}) x0hat + sqrt(1 - abar_{t-1}) eps       (abar_{-1} = 1)

        ``callback(step, i, state)`` after each step (i: the respaced index): stage ``"cdm"``,
        ``latents`` = x_{t-1}, ``x0hat``, ``eps``; ``tensors``: ``x_in`` (x_t) and
        ``model_output`` (the model's [x0hat; v]).
        """
        x = z
        for step, i in enumerate(reversed(range(self.num_timesteps))):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            out = model(x, self.model_t(t), y)
            if tracker is not None:
                tracker.dit(x.shape[0])
            x0 = torch.split(out, x.shape[1], dim=1)[0]
            eps = (_extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x - x0) / _extract(
                self.sqrt_recipm1_alphas_cumprod, t, x.shape
            )
            ap = _extract(self.alphas_cumprod_prev, t, x.shape)
            x_in, x = x, x0 * torch.sqrt(ap) + torch.sqrt(1 - ap) * eps
            if callback is not None:
                named = {"x_in": x_in, "model_output": out}
                callback(step, i, StepState("cdm", x, x0hat=x0, eps=eps, tensors=named))
        return x


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """The official decoder NLL (assumes [-1, 1] data quantised to 1/255; kept for parity)."""
    centered = x - means
    inv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(delta.clamp(min=1e-12))),
    )


# ----------------------------------------------------------------------------------------------
