"""Seeding: every random number zoomfeat draws comes from a seed the user set.

Two kinds of randomness, two helpers:

- process-wide RNGs (Python, NumPy, torch) for training runs: :func:`seed_everything`;
- *keyed* streams that must not depend on order, batching, workers or shards -- a tile's noise,
  a training sample's magnification and crop -- come from their own ``torch.Generator`` seeded by
  a hash of the key (:func:`key_seed` for strings, :func:`mix_seed` for integers). Python's
  ``hash()`` is salted per process and never used.

:func:`seeded` builds a module with a deterministic init without disturbing the caller's RNG.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")
_MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))


def key_seed(*parts: object) -> int:
    """A 63-bit seed from the SHA-256 of ``"|".join(parts)`` (stable across processes and machines)."""
    key = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & _MASK63


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 chained), for ``torch.Generator``."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def seeded(build: Callable[[], T], seed: int) -> T:
    """``build()`` under torch's global RNG seeded with ``seed``; the caller's RNG state is restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()
