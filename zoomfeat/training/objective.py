"""One optimiser step of ZoomLDM training: the eps-prediction objective, AdamW, EMA.

Objective (the official LatentDiffusion training step; docs/ARCHITECTURE.md, "Training"): for a
latent z0 with UNI grid c at magnification index m, with t ~ U{0..999} and eps ~ N(0, I) drawn by
the data stream (:mod:`zoomfeat.training.dataset`),

    x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps          (q_sample)
    ctx = Summarizer(c, m) * keep                         (keep = 0 w.p. p_uncond: classifier-free guidance)
    L   = mean (eps - UNet(x_t, t, ctx))^2                (float32)

A step accumulates ``len(batches)`` micro-batches (each loss divided by their number, so the
gradient is that of the mean over the global batch), then AdamW (lr from :func:`lr_at`), the
GradScaler (fp16 only) and the EMA update of the UNet.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from zoomfeat.runtime.distributed import DistInfo, wrap_ddp
from zoomfeat.runtime.ema import EMA
from zoomfeat.training.config import TrainConfig

if TYPE_CHECKING:
    from zoomfeat.model.zoomldm import ZoomLDM


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up from lr/warmup to lr over ``warmup_steps`` steps, then constant."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


class DiffusionObjective(nn.Module):
    """eps-prediction MSE of one batch; the module DDP wraps (UNet + summarizer parameters)."""

    _model: ZoomLDM

    def __init__(self, model: ZoomLDM) -> None:
        super().__init__()
        self.unet = model.unet
        self.summarizer = model.summarizer
        object.__setattr__(self, "_model", model)  # not a submodule: the VQ stays outside DDP

    def context(self, ssl_groups: list, batch: int, device: torch.device) -> torch.Tensor:
        """Summarizer context (B, L, D) of a mixed-magnification batch.

        Args:
            ssl_groups: ``(m, rows (k,), grids (k, C, g, g))`` per magnification index present.
            batch: B.
        """
        ctx = None
        for m, rows, grids in ssl_groups:
            rows = rows.to(device, non_blocking=True)
            c = self._model.condition(grids.to(device, non_blocking=True), int(m))
            if ctx is None:
                ctx = c.new_zeros((batch, *c.shape[1:]))
            ctx = ctx.index_copy(0, rows, c.to(ctx.dtype))
        assert ctx is not None, "a batch has at least one magnification group"
        return ctx

    def forward(
        self,
        latent: torch.Tensor,
        noise: torch.Tensor,
        *,
        t: torch.Tensor,
        keep: torch.Tensor,
        ssl_groups: list,
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            latent, noise: (B, 3, 64, 64) z0 and eps. t: (B,) long timesteps. keep: (B,) bool
                (False: context dropped to zeros).
        """
        ctx = self.context(ssl_groups, latent.shape[0], latent.device)
        ctx = ctx * keep.to(ctx.dtype)[:, None, None]  # context dropout: whole sample -> zeros
        x_t = self._model.q_sample(latent, t, noise)
        eps = self._model.eps(x_t, t, ctx)
        return F.mse_loss(eps.float(), noise.float())


def trainable_parameters(model: ZoomLDM) -> list[nn.Parameter]:
    """UNet + summarizer parameters that require gradients (the VQ is frozen)."""
    return [p for p in list(model.unet.parameters()) + list(model.summarizer.parameters()) if p.requires_grad]


@dataclass
class TrainingParts:
    """What one optimiser step needs: the model, its objective (DDP-wrapped or not), AdamW,
    the GradScaler (fp16 only) and the EMA."""

    model: ZoomLDM
    objective: nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA
    distributed: bool = False

    def wrap_ddp(self, info: DistInfo, find_unused_parameters: bool = True) -> None:
        """Wrap the objective in DDP on this rank's device (:func:`zoomfeat.runtime.distributed.wrap_ddp`;
        unchanged in one process).

        Args:
            info: this process's rank, world size and device.
            find_unused_parameters: DDP's option; True by default here (unlike the shared helper)
                because a batch of 8x8 grids leaves the summarizer's pad token without a gradient.
        """
        self.objective = wrap_ddp(self.objective, info, find_unused_parameters=find_unused_parameters)
        self.distributed = info.distributed


def setup_training(model: ZoomLDM, cfg: TrainConfig, device: torch.device, precision: str) -> TrainingParts:
    """Model on ``device`` in training mode (VQ frozen, optional gradient checkpointing), EMA of
    the UNet, AdamW over UNet + summarizer, GradScaler (enabled for fp16)."""
    model.to(device)
    model.vq.requires_grad_(False).eval()
    model.unet.train()
    model.summarizer.train()
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    ema = EMA(model.unet, cfg.ema.decay, warmup=cfg.ema.warmup)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(float(cfg.betas[0]), float(cfg.betas[1])), weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return TrainingParts(model, DiffusionObjective(model), params, optimizer, scaler, ema)


def train_step(
    parts: TrainingParts,
    batches: list[dict[str, Any]],
    *,
    lr: float,
    amp: AbstractContextManager | None = None,
    max_grad_norm: float | None = None,
) -> torch.Tensor:
    """One optimiser step over ``len(batches)`` accumulated micro-batches.

    Args:
        batches: collated micro-batches (:func:`zoomfeat.training.dataset.collate_multiscale`).
        amp: the autocast context (``runtime.device.autocast``), or None for fp32.

    Returns:
        The mean loss, a 0-d device tensor (reading it synchronises).
    """
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    device = parts.params[0].device
    loss_sum = torch.zeros((), device=device)
    n = len(batches)
    for micro, batch in enumerate(batches):
        sync = parts.distributed and micro < n - 1
        with cast(Any, parts.objective).no_sync() if sync else nullcontext():  # DDP's no_sync
            with amp if amp is not None else nullcontext():
                loss = parts.objective(
                    batch["latent"].to(device, non_blocking=True),
                    batch["noise"].to(device, non_blocking=True),
                    t=batch["t"].to(device, non_blocking=True),
                    keep=batch["keep"].to(device, non_blocking=True),
                    ssl_groups=batch["ssl_groups"],
                )
            parts.scaler.scale(loss / n).backward()
        loss_sum += loss.detach() / n
    if max_grad_norm:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.params, max_grad_norm)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.ema.update(parts.model.unet)
    return loss_sum
