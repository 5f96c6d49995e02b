"""Exponential moving average of a module's trainable weights (the trainers' shared EMA).

After ``n`` updates the decay is ``decay_t = min(decay, (1 + n) / (10 + n))`` (the official
ZoomLDM ``LitEma`` warm-up; ``warmup=False`` keeps ``decay_t = decay``, as the official DiT/CDM
``update_ema``), and every shadow moves towards its parameter::

    shadow <- shadow - (1 - decay_t) (shadow - param)      (= decay_t shadow + (1 - decay_t) param)

computed as one ``lerp`` per tensor. Why an average: the sampled model is the average of the
last ~1 / (1 - decay) iterates (10,000 at 0.9999), which smooths the optimiser's noise; the warm-up
keeps the early average from being dominated by the random initialisation. Shadows are float32 on
the parameters' device, kept for trainable parameters only (frozen tensors -- the DiT's fixed
position table, a frozen VQ -- equal their parameter at every step, so ``swapped_into`` leaves them
as they are). ZoomLDM's trainer keeps an EMA of the UNet only (the summarizer has none, as in the
released checkpoint); the CDM trainer one of the whole DiT.

The state (:meth:`EMA.state_dict`) is the shadow tensors keyed by parameter name; the bookkeeping
(:meth:`EMA.bookkeeping`: decay, warm-up, number of updates) goes into a checkpoint's
``state.json`` so a resumed run continues the same decay schedule.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from zoomfeat.runtime.weights import key_mismatch_lines


class EMA:
    """Float32 shadows of ``module``'s trainable parameters (see the module docstring).

    Args:
        module: the module whose ``requires_grad`` parameters are averaged.
        decay: the decay (0.9999 for both official trainers).
        warmup: use the LitEma warm-up ``min(decay, (1 + n) / (10 + n))``.
        num_updates: updates already made (restored from a checkpoint's bookkeeping).
    """

    def __init__(
        self, module: nn.Module, decay: float = 0.9999, *, warmup: bool = True, num_updates: int = 0
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = int(num_updates)
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.shadow: dict[str, torch.Tensor] = {
            n: p.detach().float().clone() for n, p in module.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        """The decay of the next update's average (the update count already incremented)."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One EMA step towards ``module``'s current parameters (same names as at construction)."""
        self.num_updates += 1
        d = self.current_decay()
        params = dict(module.named_parameters())
        shadows = [self.shadow[n] for n in self.names]
        values = [params[n].detach().float() for n in self.names]
        torch._foreach_lerp_(shadows, values, 1.0 - d)

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {n: t.to(device) for n, t in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow tensors keyed by the module's parameter names."""
        return dict(self.shadow)

    def bookkeeping(self) -> dict[str, float | bool | int]:
        """``decay``, ``warmup`` and ``num_updates``: what ``state.json`` keeps beside the shadows."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy saved shadows in (names and shapes must be this module's; ValueError otherwise)."""
        mismatch = key_mismatch_lines(state, self.shadow)
        if mismatch:
            raise ValueError("EMA state does not fit the module:\n" + "\n".join(mismatch))
        for n in self.names:
            self.shadow[n].copy_(state[n])

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite ``module``'s averaged parameters with the shadows."""
        params = dict(module.named_parameters())
        for n in self.names:
            params[n].copy_(self.shadow[n])

    @contextmanager
    def swapped_into(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights into ``module`` (the live weights come back after)."""
        params = dict(module.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.names}
        try:
            self.copy_to(module)
            yield module
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(backup[n])
