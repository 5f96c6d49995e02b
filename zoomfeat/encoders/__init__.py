"""Tile encoders (UNI and a tiny stand-in with the same interface).

``build_encoder("uni" | "tiny", checkpoint=None, allow_random_weights=False)`` returns a
:class:`~zoomfeat.encoders.base.TileEncoder` with ``.embed_dim``, ``.preprocess(tiles)``,
``forward(x) -> (B, embed_dim)``, ``.checkpoint_id`` and ``.checkpoint_hash``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zoomfeat.encoders.config import EMBED_DIM, ENCODERS, EncoderSection
from zoomfeat.runtime.errors import ConfigError

if TYPE_CHECKING:
    from zoomfeat.encoders.base import TileEncoder


def build_encoder(
    name: str, checkpoint: str | None = None, allow_random_weights: bool = False, seed: int = 0
) -> TileEncoder:
    """Build encoder ``name`` in eval mode with its weights.

    Args:
        name: ``"uni"`` (ViT-L/16, 1024-d) or ``"tiny"`` (ViT, 32-d, for tests and the demo).
        checkpoint: local weight file / directory, or hub id (UNI: default ``MahmoodLab/UNI``).
        allow_random_weights: build UNI with seeded random weights when no checkpoint is
            given (the tiny encoder always may).
        seed: seed of the random init.
    """
    if name == "uni":
        from zoomfeat.encoders.uni import build_uni

        enc = build_uni(checkpoint, allow_random_weights=allow_random_weights, seed=seed)
    elif name == "tiny":
        from zoomfeat.encoders.tiny import build_tiny

        enc = build_tiny(checkpoint, seed=seed)
    else:
        raise ConfigError(f"unknown encoder {name!r}: use one of {', '.join(ENCODERS)} (encoder=<name>)")
    return enc.eval().requires_grad_(False)


__all__ = ["build_encoder", "ENCODERS", "EMBED_DIM", "EncoderSection"]
