"""What a training checkpoint holds beside the model, and how a run is restored from it.

A checkpoint directory (written atomically by :mod:`zoomfeat.runtime.checkpoints`) is a ZoomLDM
pretrained directory with the EMA UNet (what sampling and extraction use, as in the released
checkpoint), and ``trainer/`` with everything an exact resume needs:

    trainer/unet_live.safetensors    the live (optimised) UNet
    trainer/unet_ema.safetensors     the EMA shadows (float32)
    trainer/optimizer.pt             AdamW state (weights-only torch.save)
    trainer/grad_scaler.pt           GradScaler state (fp16 only)
    trainer/rng.pt                   torch (CPU and CUDA) RNG states
    trainer/state.json               step, config, data fingerprint, EMA bookkeeping, Python and
                                     NumPy RNG states -- written last: marks the checkpoint complete

The ``trainer/`` files are written and read by the shared :mod:`zoomfeat.runtime.train_state`
(the CDM trainer uses it too); this module adds what is ZoomLDM's: the pretrained directory, the
sample grids, and which weight sets are saved. Resuming restores all of it; the data stream needs no state (sample n is a function of
(seed, n)), so the resumed run continues the uninterrupted one exactly on the same machine with
the same thread count (docs/ARCHITECTURE.md, "Training").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zoomfeat.runtime import checkpoints as ckpt_io
from zoomfeat.runtime.ema import EMA
from zoomfeat.runtime.train_state import (
    TRAINER_DIR,
    cpu_tensors,
    python_rng_state,
    read_trainer_dir,
    set_rng_state,
    torch_rng_state,
    write_trainer_dir,
)
from zoomfeat.training.samples import write_sample_grids

if TYPE_CHECKING:
    from zoomfeat.model.zoomldm import ZoomLDM


__all__ = [
    "TRAINER_FORMAT",
    "load_training_checkpoint",
    "python_rng_state",
    "save_training_checkpoint",
    "set_rng_state",
    "torch_rng_state",
]

TRAINER_FORMAT = 1


def save_training_checkpoint(
    root: Path,
    step: int,
    *,
    model: ZoomLDM,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: dict[str, Any],
    keep: int | None = None,
    samples: tuple | None = None,
) -> Path:
    """Write one checkpoint atomically (layout in the module docstring).

    Args:
        root: the run's ``checkpoints`` directory.
        state: run facts for ``state.json`` (step, config, data fingerprint ...).
        samples: ``(conditions, SampleConfig, device, precision)`` to write sample grids, or None.

    Returns:
        The checkpoint directory.
    """

    def write(tmp: Path) -> None:
        live = cpu_tensors(model.unet.state_dict())
        with ema.swapped_into(model.unet):
            model.save_pretrained(tmp)
            if samples is not None:
                conditions, sample_cfg, device, precision = samples
                write_sample_grids(
                    model,
                    conditions,
                    out_dir=tmp / "samples",
                    cfg=sample_cfg,
                    step=step,
                    device=device,
                    precision=precision,
                )
        weights = {"unet_live": live, "unet_ema": ema.state_dict()}
        write_trainer_dir(
            tmp / TRAINER_DIR, weights, optimizer=optimizer, scaler=scaler, ema=ema, state=state
        )

    return ckpt_io.write_checkpoint(root, step, write, keep=keep)


def load_training_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Model (EMA weights in the UNet) and training state of a checkpoint, weights-only.

    Returns:
        ``model``, ``state`` (state.json), ``unet_live``, ``unet_ema``, ``optimizer``, ``rng``
        and, for fp16 runs, ``grad_scaler``.
    """
    from zoomfeat.model import ZoomLDM

    ckpt_io.read_state(path)  # a clear error when the checkpoint is not complete
    out = read_trainer_dir(path / TRAINER_DIR, ("unet_live", "unet_ema"), device)
    out["model"] = ZoomLDM.from_pretrained(str(path))
    return out
