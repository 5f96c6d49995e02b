"""DDIM and PLMS samplers, numerically matching the official LDM ``DDIMSampler`` / ``PLMSSampler``.

* timesteps ("uniform"): c = T // S, ``range(0, T, c) + 1``, visited high to low (so, like the
  official code, S that does not divide T gives a few more steps than asked);
* alphas = alphas_cumprod[steps] (the float32 buffer), alphas_prev = [alphas_cumprod[0]] + the
  previous ones (the last step ends at alphas_cumprod[0] = 0.9985, not 1);
* classifier-free guidance: one UNet call on [uncond; cond], e = e_u + s (e_c - e_u); with s = 1
  a single conditional call;
* update: pred_x0 = (x - sqrt(1-a_t) e) / sqrt(a_t); x_prev = sqrt(a_prev) pred_x0 +
  sqrt(1 - a_prev - sigma^2) e + sigma z; no clipping;
* PLMS: pseudo improved Euler on the first step (2 UNet calls), then Adams-Bashforth of order
  2, 3, 4 on the stored eps values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Official "uniform" DDIM timesteps (ascending), e.g. 5 -> [1, 201, 401, 601, 801]."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must lie in [1, {num_train_timesteps}], got {steps}")
    c = num_train_timesteps // steps
    return torch.arange(0, num_train_timesteps, c, dtype=torch.long) + 1


def ddim_parameters(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, eta: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alphas, alphas_prev, sigmas) in float64, from the float32 ``alphas_cumprod`` buffer."""
    ac = alphas_cumprod.detach().cpu().double()
    alphas = ac[timesteps]
    alphas_prev = torch.cat([ac[:1], ac[timesteps[:-1]]])
    sigmas = eta * ((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)).sqrt()
    return alphas, alphas_prev, sigmas


def guided_eps(
    eps_fn: EpsFn, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, guidance: float
) -> torch.Tensor:
    if guidance == 1.0:
        return eps_fn(x, t, cond).float()
    e = eps_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond])).float()
    e_u, e_c = e.chunk(2)
    return e_u + guidance * (e_c - e_u)


def _step(
    x: torch.Tensor,
    e: torch.Tensor,
    a_t: float,
    a_prev: float,
    sigma: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    def full(v: float) -> torch.Tensor:
        return torch.full((x.shape[0], 1, 1, 1), v, device=x.device, dtype=torch.float32)

    at, ap, sg = full(a_t), full(a_prev), full(sigma)
    sq1m = (1.0 - at).sqrt()  # float32, as the official np.sqrt(1. - ddim_alphas)
    pred_x0 = (x - sq1m * e) / at.sqrt()
    dir_xt = (1.0 - ap - sg**2).sqrt() * e
    x_prev = ap.sqrt() * pred_x0 + dir_xt
    if sigma != 0.0:
        noise = torch.randn(
            x.shape,
            generator=generator,
            device=x.device if generator is None else generator.device,
            dtype=x.dtype,
        ).to(x.device)
        x_prev = x_prev + sg * noise
    return x_prev, pred_x0


def sample_ddim(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int = 50,
    guidance: float = 2.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """Official DDIM sampling; returns (x_0 sample, {"x_inter": [...], "pred_x0": [...]} per step)."""
    ts = ddim_timesteps(steps, alphas_cumprod.shape[0])
    alphas, alphas_prev, sigmas = ddim_parameters(alphas_cumprod, ts, eta)
    x = x_T.float()
    inter: dict[str, list[torch.Tensor]] = {"x_inter": [], "pred_x0": []}
    n = len(ts)
    for i, step in enumerate(tqdm(ts.flip(0).tolist(), desc="DDIM", disable=not progress)):
        index = n - i - 1
        t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
        e = guided_eps(eps_fn, x, t, cond, uncond, guidance)
        x, pred_x0 = _step(
            x, e, float(alphas[index]), float(alphas_prev[index]), float(sigmas[index]), generator
        )
        inter["x_inter"].append(x)
        inter["pred_x0"].append(pred_x0)
    return x, inter


def sample_plms(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int = 50,
    guidance: float = 2.0,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """Official PLMS sampling (eta must be 0); returns (sample, intermediates)."""
    ts = ddim_timesteps(steps, alphas_cumprod.shape[0])
    alphas, alphas_prev, _ = ddim_parameters(alphas_cumprod, ts, 0.0)
    time_range = ts.flip(0).tolist()
    n = len(ts)
    x = x_T.float()
    old_eps: list[torch.Tensor] = []
    inter: dict[str, list[torch.Tensor]] = {"x_inter": [], "pred_x0": []}

    for i, step in enumerate(tqdm(time_range, desc="PLMS", disable=not progress)):
        index = n - i - 1
        b = x.shape[0]
        t = torch.full((b,), step, device=x.device, dtype=torch.long)
        t_next = torch.full((b,), time_range[min(i + 1, n - 1)], device=x.device, dtype=torch.long)
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        e_t = guided_eps(eps_fn, x, t, cond, uncond, guidance)
        if not old_eps:
            x_prov, _ = _step(x, e_t, a_t, a_prev, 0.0, None)
            e_next = guided_eps(eps_fn, x_prov, t_next, cond, uncond, guidance)
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = _step(x, e_prime, a_t, a_prev, 0.0, None)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        inter["x_inter"].append(x)
        inter["pred_x0"].append(pred_x0)
    return x, inter
