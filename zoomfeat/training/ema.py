"""Exponential moving average of the UNet weights, as the official ``LitEma``.

``decay_t = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the official warm-up; set
``warmup=False`` for a constant decay), ``shadow <- shadow - (1 - decay_t) (shadow - param)``.
Shadows are float32 on the parameters' device. Only the UNet has an EMA copy (the VQ is frozen,
the summarizer has none, as in the released checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from zoomfeat.runtime.weights import key_mismatch_lines


class EMA:
    def __init__(
        self, module: nn.Module, decay: float = 0.9999, warmup: bool = True, num_updates: int = 0
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
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
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

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        mismatch = key_mismatch_lines(state, self.shadow)
        if mismatch:
            raise ValueError("EMA state does not fit the UNet:\n" + "\n".join(mismatch))
        for n in self.names:
            self.shadow[n].copy_(state[n])

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
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
