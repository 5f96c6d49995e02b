"""DDP set-up under ``torchrun``: :mod:`zoomfeat.runtime.distributed` (moved there so the CDM
trainer in ``generation/`` shares it); these names stay for the trainer and its users."""

from __future__ import annotations

from zoomfeat.runtime.distributed import (
    DistInfo,
    apply_threads,
    barrier,
    init_distributed,
    mean_over_ranks,
    shutdown,
    wrap_ddp,
)

__all__ = [
    "DistInfo",
    "apply_threads",
    "barrier",
    "init_distributed",
    "mean_over_ranks",
    "shutdown",
    "wrap_ddp",
]
