"""Tile encoders: the registry of published pathology encoders, UNI, and a tiny test encoder.

``build_encoder(name, checkpoint=None, allow_random_weights=False, device=None)`` returns a
:class:`~zoomfeat.encoders.base.TileEncoder` with ``.embed_dim``, ``.input_px``,
``.preprocess(tiles)`` (uint8 (B, H, W, 3) -> (B, 3, input_px, input_px)), ``forward(x) ->
(B, embed_dim)`` (the published output), ``.checkpoint_id`` and ``.checkpoint_hash``.
:data:`ENCODERS` is the registry (name -> :class:`~zoomfeat.encoders.registry.EncoderSpec`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zoomfeat.encoders.config import (
    CONDITIONING_ENCODERS,
    EMBED_DIM,
    ENCODERS,
    EncoderSection,
    TileEncoderSection,
)
from zoomfeat.encoders.registry import EncoderSpec, get_spec

if TYPE_CHECKING:
    import torch

    from zoomfeat.encoders.base import TileEncoder


def build_encoder(
    name: str,
    checkpoint: str | None = None,
    *,
    allow_random_weights: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> TileEncoder:
    """Build encoder ``name`` in eval mode with its weights, without gradients.

    Args:
        name: a key of :data:`ENCODERS` (``uni``, ``phikon``, ``virchow2`` ...; ``tiny`` for tests).
        checkpoint: local weight file / directory, or hub id (default: the registry's hub repo;
            CTransPath is not on a hub and needs a path).
        allow_random_weights: build seeded random weights when no checkpoint is given (the tiny
            encoder always may).
        seed: seed of the random init.
        device: move the encoder there (default: CPU).

    Raises:
        ConfigError: unknown name. WeightsNotFoundError / WeightsError: see the builders.
    """
    spec = get_spec(name)  # ConfigError for an unknown name
    if spec.name == "uni":
        from zoomfeat.encoders.uni import build_uni

        enc = build_uni(checkpoint, allow_random_weights=allow_random_weights, seed=seed)
    elif spec.name == "tiny":
        from zoomfeat.encoders.tiny import build_tiny

        enc = build_tiny(checkpoint, seed=seed)
    else:
        from zoomfeat.encoders.build import build_registry_encoder

        enc = build_registry_encoder(name, checkpoint, allow_random_weights=allow_random_weights, seed=seed)
    if device is not None:
        enc = enc.to(device)
    return enc.eval().requires_grad_(False)


__all__ = [
    "CONDITIONING_ENCODERS",
    "EMBED_DIM",
    "ENCODERS",
    "EncoderSection",
    "EncoderSpec",
    "TileEncoderSection",
    "build_encoder",
    "get_spec",
]
