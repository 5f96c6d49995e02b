"""Device, precision and autocast: one home, so every entry point resolves them the same way.

``device``: ``auto`` picks the first of CUDA, Apple ``mps`` and the CPU that is available;
``cuda`` means the current CUDA device; ``cuda:N``/``mps``/``cpu`` are taken as given (an
unavailable one is a :class:`~zoomfeat.runtime.errors.ConfigError`, not a crash deep inside).

``precision``: ``fp32`` runs as is; ``bf16``/``fp16`` run the forward passes under
``torch.autocast`` (parameters stay float32). ``auto`` is bf16 on a CUDA device that supports it,
fp16 on older CUDA devices, fp32 elsewhere. fp16 needs a CUDA device where gradients are
involved (GradScaler); for inference the CPU runs it too.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from zoomfeat.runtime.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` a ``device=`` setting names.

    Args:
        spec: ``auto`` (CUDA > mps > CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a device.
        local_rank: under torchrun, a bare ``cuda``/``auto`` resolves to ``cuda:{local_rank}``.

    Returns:
        The device; CUDA devices always carry an index.
    """
    if isinstance(spec, torch.device):
        dev = spec
    else:
        text = "auto" if spec is None else str(spec).strip().lower()
        if text == "auto":
            text = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
        try:
            dev = torch.device(text)
        except RuntimeError as err:
            raise ConfigError(f"device={spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={spec} but CUDA is not available on this machine; use device=cpu or device=auto"
            )
        if dev.index is None:
            dev = torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={dev} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not _mps_available():
        raise ConfigError(f"device={spec} but Apple MPS is not available here; use device=cpu or device=auto")
    return dev


def resolve_precision(precision: str, device: torch.device, *, training: bool = False) -> str:
    """``fp32`` | ``bf16`` | ``fp16`` for ``device`` (``auto`` resolved, impossible choices refused)."""
    p = str(precision).lower()
    if p == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if p not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)} or auto")
    if training and p == "fp16" and device.type != "cuda":
        raise ConfigError(
            "precision=fp16 needs a CUDA device for training (GradScaler); use fp32 or bf16 on the CPU"
        )
    return p


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """``torch.autocast`` for ``precision`` on ``device`` (a no-op context for fp32)."""
    if precision == "fp32":
        return nullcontext()
    if precision not in _DTYPES:
        raise ConfigError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 / AMX): bf16 autocast pays off there."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without oneDNN
        return False


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
