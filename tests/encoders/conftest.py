"""Helpers for the encoder tests."""

from __future__ import annotations

import numpy as np
import torch


def tiles(n: int = 3, px: int = 256, seed: int = 0) -> torch.Tensor:
    """``n`` random uint8 RGB tiles (n, px, px, 3)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, px, px, 3), dtype=np.uint8))
