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

Both samplers call ``callback(step, t, state)`` after every step (:mod:`zoomfeat.model.callbacks`;
stage ``"ddim"`` / ``"plms"``, ``latents`` = x_prev, ``x0hat`` = pred_x0, ``eps`` = the eps the
update used). docs/generation.md, "DDIM and PLMS", has the equations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zoomfeat.model.callbacks import StepCallback, StepState

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
    eps_fn: EpsFn,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """Classifier-free guidance in one UNet call on [uncond; cond]::

    eps = eps_u + s (eps_c - eps_u)        (s = ``guidance``; s = 1: one conditional call)
    """
    if guidance == 1.0:
        return eps_fn(x, t, cond).float()
    e = eps_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond])).float()
    e_u, e_c = e.chunk(2)
    return e_u + guidance * (e_c - e_u)


def _step(
    x: torch.Tensor,
    e: torch.Tensor,
    *,
    a_t: float,
    a_prev: float,
    sigma: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update; returns (x_prev, pred_x0)::

    pred_x0 = (x - sqrt(1 - a_t) e) / sqrt(a_t)
    x_prev  = sqrt(a_prev) pred_x0 + sqrt(1 - a_prev - sigma^2) e + sigma z,   z ~ N(0, I)
    """

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
    *,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int = 50,
    guidance: float = 2.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Official DDIM sampling from ``x_T``; returns the x_0 sample.

    Steps t_S > ... > t_1 (:func:`ddim_timesteps`); per step, with the guided eps of
    :func:`guided_eps` and a_t = abar[t_i], a_prev = abar[t_{i-1}] (abar[0] after the last)::

        pred_x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)
        x      <- sqrt(a_prev) pred_x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z
        sigma   = eta sqrt((1 - a_prev) / (1 - a_t) (1 - a_t / a_prev))

    ``callback(step, t, state)`` after each step: stage ``"ddim"``, ``latents`` = x,
    ``x0hat`` = pred_x0, ``eps``.
    """
    ts = ddim_timesteps(steps, alphas_cumprod.shape[0])
    alphas, alphas_prev, sigmas = ddim_parameters(alphas_cumprod, ts, eta)
    x = x_T.float()
    n = len(ts)
    for i, step in enumerate(ts.flip(0).tolist()):
        index = n - i - 1
        t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
        e = guided_eps(eps_fn, x, t, cond=cond, uncond=uncond, guidance=guidance)
        x, pred_x0 = _step(
            x,
            e,
            a_t=float(alphas[index]),
            a_prev=float(alphas_prev[index]),
            sigma=float(sigmas[index]),
            generator=generator,
        )
        if callback is not None:
            callback(i, int(step), StepState("ddim", x, x0hat=pred_x0, eps=e))
    return x


def sample_plms(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    *,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int = 50,
    guidance: float = 2.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Official PLMS sampling (eta 0) from ``x_T``; returns the x_0 sample.

    The DDIM update (:func:`sample_ddim`, sigma = 0) with eps replaced by the linear multistep
    combination e' of the current guided eps e_t and the stored ones (e_{t+1}, ...)::

        first step: e' = (e_t + e(x~, t_next)) / 2,  x~ = the DDIM update of x with e_t (2 UNet calls)
        then        e' = (3 e_t - e_1) / 2
                    e' = (23 e_t - 16 e_1 + 5 e_2) / 12
                    e' = (55 e_t - 59 e_1 + 37 e_2 - 9 e_3) / 24

    ``callback(step, t, state)`` after each step: stage ``"plms"``, ``latents`` = x,
    ``x0hat`` = pred_x0, ``eps`` = e'.
    """
    ts = ddim_timesteps(steps, alphas_cumprod.shape[0])
    alphas, alphas_prev, _ = ddim_parameters(alphas_cumprod, ts, 0.0)
    time_range = ts.flip(0).tolist()
    n = len(ts)
    x = x_T.float()
    old_eps: list[torch.Tensor] = []

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_eps(eps_fn, x, t, cond=cond, uncond=uncond, guidance=guidance)

    for i, step in enumerate(time_range):
        index = n - i - 1
        b = x.shape[0]
        t = torch.full((b,), step, device=x.device, dtype=torch.long)
        t_next = torch.full((b,), time_range[min(i + 1, n - 1)], device=x.device, dtype=torch.long)
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        e_t = guided(x, t)
        if not old_eps:
            x_prov, _ = _step(x, e_t, a_t=a_t, a_prev=a_prev, sigma=0.0, generator=None)
            e_next = guided(x_prov, t_next)
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = _step(x, e_prime, a_t=a_t, a_prev=a_prev, sigma=0.0, generator=None)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        if callback is not None:
            callback(i, int(step), StepState("plms", x, x0hat=pred_x0, eps=e_prime))
    return x
