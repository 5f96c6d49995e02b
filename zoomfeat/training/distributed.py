"""Multi-process set-up for DDP under ``torchrun``: rank, world size, device, barriers.

``torchrun --nproc_per_node=N -m zoomfeat.train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in the environment; the process group uses nccl on CUDA and
gloo on the CPU. One process (no torchrun) is world size 1 and needs no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from zoomfeat.runtime.device import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Rank / world size from torchrun's environment, this process's device, and the process
    group when there is more than one process.

    Args:
        device: the ``device=`` setting; under torchrun a bare ``cuda``/``auto`` is ``cuda:LOCAL_RANK``.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank=local if world > 1 else None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op in one process)."""
    if info.distributed:
        import torch.distributed as dist

        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a scalar tensor over the ranks (in place; unchanged in one process)."""
    if info.distributed:
        import torch.distributed as dist

        dist.all_reduce(value)
        value /= info.world_size
    return value


def shutdown(info: DistInfo) -> None:
    """Destroy the process group this process made (if any)."""
    import torch.distributed as dist

    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
