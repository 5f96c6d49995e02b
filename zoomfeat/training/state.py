"""What a training checkpoint holds beside the model, and how a run is restored from it.

A checkpoint directory (written atomically by :mod:`zoomfeat.training.checkpoint`) is a ZoomLDM
pretrained directory with the EMA UNet (what sampling and extraction use, as in the released
checkpoint), and ``trainer/`` with everything an exact resume needs:

    trainer/unet_live.safetensors    the live (optimised) UNet
    trainer/unet_ema.safetensors     the EMA shadows (float32)
    trainer/optimizer.pt             AdamW state (weights-only torch.save)
    trainer/grad_scaler.pt           GradScaler state (fp16 only)
    trainer/rng.pt                   torch (CPU and CUDA) RNG states
    trainer/state.json               step, config, data fingerprint, EMA bookkeeping, Python and
                                     NumPy RNG states -- written last: marks the checkpoint complete

Resuming restores all of it; the data stream needs no state (sample n is a function of
(seed, n)), so the resumed run continues the uninterrupted one exactly on the same machine with
the same thread count (docs/ARCHITECTURE.md, "Training").
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoomfeat.runtime.atomic import atomic_write_text
from zoomfeat.training import checkpoint as ckpt_io
from zoomfeat.training.ema import EMA
from zoomfeat.training.samples import write_sample_grids

TRAINER_FORMAT = 1


def torch_rng_state() -> dict[str, Any]:
    """torch's CPU RNG state, and every CUDA device's when CUDA is in use."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def python_rng_state() -> dict[str, Any]:
    """NumPy's and Python's global RNG states as JSON-able lists."""
    np_state = np.random.get_state()
    py = random.getstate()
    return {
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            *[x.item() if hasattr(x, "item") else x for x in np_state[2:]],
        ],
        "python": [py[0], list(py[1]), py[2]],
    }


def set_rng_state(state: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """Restore :func:`torch_rng_state` (``state``) and :func:`python_rng_state` (``extra``)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = list(state["cuda"])
        for i in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved[i], i)
    if "numpy" in extra:
        np_state = extra["numpy"]
        np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    if "python" in extra:
        py = extra["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))


def _cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_training_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
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
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        live = _cpu(model.unet.state_dict())
        with ema.swapped_into(model.unet):
            model.save_pretrained(tmp)
            if samples is not None:
                conditions, sample_cfg, device, precision = samples
                write_sample_grids(model, conditions, tmp / "samples", sample_cfg, step, device, precision)
        tdir = tmp / "trainer"
        tdir.mkdir(exist_ok=True)
        save_file(live, str(tdir / "unet_live.safetensors"))
        save_file(_cpu(ema.state_dict()), str(tdir / "unet_ema.safetensors"))
        torch.save(optimizer.state_dict(), tdir / "optimizer.pt")
        if scaler is not None and scaler.is_enabled():
            torch.save(scaler.state_dict(), tdir / "grad_scaler.pt")
        torch.save(torch_rng_state(), tdir / "rng.pt")
        full = {
            **state,
            "rng": python_rng_state(),
            "ema": {"decay": ema.decay, "warmup": ema.warmup, "num_updates": ema.num_updates},
        }
        # last: marks the checkpoint complete
        atomic_write_text(tdir / "state.json", json.dumps(full, indent=1, sort_keys=True, default=str))

    return ckpt_io.write_checkpoint(root, step, write, keep=keep)


def load_training_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Model (EMA weights in the UNet) and training state of a checkpoint, weights-only.

    Returns:
        ``model``, ``state`` (state.json), ``unet_live``, ``unet_ema``, ``optimizer``, ``rng``
        and, for fp16 runs, ``grad_scaler``.
    """
    from safetensors.torch import load_file

    from zoomfeat.model import ZoomLDM

    state = ckpt_io.read_state(path)
    model = ZoomLDM.from_pretrained(str(path))
    tdir = path / "trainer"
    out = {
        "model": model,
        "state": state,
        "unet_live": load_file(str(tdir / "unet_live.safetensors")),
        "unet_ema": load_file(str(tdir / "unet_ema.safetensors")),
        "optimizer": torch.load(tdir / "optimizer.pt", map_location=device, weights_only=True),
        "rng": torch.load(tdir / "rng.pt", map_location="cpu", weights_only=True),
    }
    if (tdir / "grad_scaler.pt").is_file():
        out["grad_scaler"] = torch.load(tdir / "grad_scaler.pt", map_location="cpu", weights_only=True)
    return out
