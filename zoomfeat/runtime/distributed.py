"""Multi-process set-up for DDP under ``torchrun``: threads, rank, world size, device, barriers.

Shared by the ZoomLDM trainer and the CDM trainer. ``torchrun --nproc_per_node=N -m zoomfeat.train
...`` (or ``-m zoomfeat.generate mode=cdm_train``) starts N processes with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` in the environment; the process group uses nccl on CUDA and gloo on the CPU.
One process (no torchrun) is world size 1 and needs no process group.

DDP's contract, which both trainers keep: every rank holds the same weights and takes its own
slice of the global batch; DDP all-reduces the gradients to their mean over ranks, so with equal
slices the update is the one of the mean loss over the global batch -- the single-process update,
up to float32 summation order. Only rank 0 writes (checkpoints, logs); :func:`barrier` keeps the
others from reading a checkpoint before it is complete.

Threads: float32 reductions are split over CPU threads, so their rounding depends on the thread
count; an exact resume needs the original run's (:func:`apply_threads`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from zoomfeat.runtime.device import resolve_device

log = logging.getLogger("zoomfeat.distributed")


def apply_threads(threads: int | None) -> None:
    """Use ``threads`` torch CPU threads in this process (intra-op, and inter-op where still possible).

    Float32 reductions are split over threads, so their rounding depends on the thread count: an
    exact resume needs the original run's. Inter-op threads can only be set before the process
    does parallel work; later calls leave them as they are (they do not change results).

    Args:
        threads: the thread count, or None to leave torch's setting alone.
    """
    if threads is None:
        return
    torch.set_num_threads(int(threads))
    if torch.get_num_interop_threads() != int(threads):
        try:
            torch.set_num_interop_threads(int(threads))
        except RuntimeError:
            log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())


@dataclass
class DistInfo:
    """This process's place in the run: rank, world size, local rank and its device."""

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

    Returns:
        The :class:`DistInfo` of this process (call :func:`shutdown` with it at the end).
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


def wrap_ddp(module: nn.Module, info: DistInfo, *, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel on this rank's device (unchanged in one process).

    Buffers are not broadcast (both trainers' buffers are constants or per-rank statistics).

    Args:
        module: the module whose forward computes the loss (its parameters are all-reduced).
        find_unused_parameters: DDP's option (needed when some parameters get no gradient).
    """
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(
        module,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
        broadcast_buffers=False,
    )


def shutdown(info: DistInfo) -> None:
    """Destroy the process group this process made (if any)."""
    import torch.distributed as dist

    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
