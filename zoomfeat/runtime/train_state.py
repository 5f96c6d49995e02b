"""The ``trainer/`` directory of a checkpoint: what an exact resume needs beside the model's files.

Shared by the ZoomLDM trainer and the CDM trainer (the checkpoint directory around it is
:mod:`zoomfeat.runtime.checkpoints`)::

    trainer/{name}.safetensors    weight sets named by the trainer (ZoomLDM: unet_live, unet_ema;
                                  the CDM: model_live, model_ema): the optimised weights and the
                                  float32 EMA shadows
    trainer/optimizer.pt          the optimiser state (torch.save of tensors and numbers only)
    trainer/grad_scaler.pt        GradScaler state (fp16 runs only)
    trainer/rng.pt                torch's CPU RNG state (and every CUDA device's when in use)
    trainer/state.json            the trainer's run facts (step, config, data fingerprint, ...),
                                  the EMA bookkeeping, Python's and NumPy's RNG states --
                                  written last: marks the checkpoint complete

Why each part: AdamW's moments and step count change every update, so a resume without them
is a different run; the EMA shadows are a second set of weights with their own history; the RNG
states matter wherever a trainer draws from the global generators (both trainers draw their
samples from keyed generators, so these are a safety net, not the mechanism). Everything is read
back without unpickling code (safetensors, ``torch.load(weights_only=True)``, JSON).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoomfeat.runtime.atomic import atomic_write_text
from zoomfeat.runtime.ema import EMA
from zoomfeat.runtime.errors import WeightsError

TRAINER_DIR = "trainer"


def torch_rng_state() -> dict[str, Any]:
    """torch's CPU RNG state, and every CUDA device's when CUDA is in use."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def python_rng_state() -> dict[str, Any]:
    """NumPy's and Python's global RNG states as JSON-able lists."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
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


def cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (what safetensors writes)."""
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def write_trainer_dir(
    tdir: Path,
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    ema: EMA | None,
    state: Mapping[str, Any],
) -> None:
    """Fill ``tdir`` (layout in the module docstring); ``state.json`` is written last.

    Args:
        tdir: the checkpoint's ``trainer`` directory (created).
        weights: file stem -> state dict (e.g. ``{"unet_live": ..., "unet_ema": ...}``).
        optimizer: its ``state_dict()`` goes to ``optimizer.pt``.
        scaler: saved when enabled (fp16).
        ema: its bookkeeping goes under ``"ema"`` in ``state.json`` (its shadows belong in ``weights``).
        state: the trainer's run facts (JSON-able; ``step`` at least).
    """
    from safetensors.torch import save_file

    tdir.mkdir(exist_ok=True)
    for stem, sd in weights.items():
        save_file(cpu_tensors(sd), str(tdir / f"{stem}.safetensors"))
    torch.save(optimizer.state_dict(), tdir / "optimizer.pt")
    if scaler is not None and scaler.is_enabled():
        torch.save(scaler.state_dict(), tdir / "grad_scaler.pt")
    torch.save(torch_rng_state(), tdir / "rng.pt")
    full = {**state, "rng": python_rng_state()}
    if ema is not None:
        full["ema"] = ema.bookkeeping()
    # last: marks the checkpoint complete
    atomic_write_text(tdir / "state.json", json.dumps(full, indent=1, sort_keys=True, default=str))


def read_trainer_dir(tdir: Path, weights: Iterable[str], device: torch.device) -> dict[str, Any]:
    """What :func:`write_trainer_dir` wrote, read weights-only.

    Args:
        tdir: the checkpoint's ``trainer`` directory.
        weights: the weight-set stems to read (each a ``{stem}.safetensors``).
        device: where the optimiser state goes (weights stay on the CPU).

    Returns:
        ``state`` (state.json), each stem's state dict, ``optimizer``, ``rng`` and, for fp16
        runs, ``grad_scaler``.
    """
    from safetensors.torch import load_file

    def read(name: str, load: Callable[[Path], Any]) -> Any:
        path = tdir / name
        try:
            return load(path)
        except Exception as err:  # noqa: BLE001 - any reader failure: one line naming the file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightsError(
                f"{path}: cannot be read ({first}); the checkpoint is damaged: move its step directory "
                "aside and rerun to resume from the one before"
            ) from err

    out: dict[str, Any] = {
        "state": read("state.json", lambda p: json.loads(p.read_text())),
        "optimizer": read("optimizer.pt", lambda p: torch.load(p, map_location=device, weights_only=True)),
        "rng": read("rng.pt", lambda p: torch.load(p, map_location="cpu", weights_only=True)),
    }
    for stem in weights:
        out[stem] = read(f"{stem}.safetensors", lambda p: load_file(str(p)))
    if (tdir / "grad_scaler.pt").is_file():
        out["grad_scaler"] = read(
            "grad_scaler.pt", lambda p: torch.load(p, map_location="cpu", weights_only=True)
        )
    return out


def restore_optimisation(
    resumed: Mapping[str, Any],
    *,
    ema: EMA,
    ema_key: str,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Put a checkpoint's EMA shadows and bookkeeping, optimiser, scaler and RNG states back.

    Args:
        resumed: :func:`read_trainer_dir`'s result.
        ema_key: the weight-set stem holding the EMA shadows.
    """
    device = next(iter(ema.shadow.values())).device if ema.shadow else torch.device("cpu")
    ema.load_state_dict({k: v.to(device) for k, v in resumed[ema_key].items()})
    ema.num_updates = int(resumed["state"]["ema"]["num_updates"])
    optimizer.load_state_dict(resumed["optimizer"])
    if scaler is not None and "grad_scaler" in resumed and scaler.is_enabled():
        scaler.load_state_dict(resumed["grad_scaler"])
    set_rng_state(resumed["rng"], resumed["state"].get("rng", {}))
