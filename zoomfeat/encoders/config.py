"""Encoder config sections.

- :class:`EncoderSection` is the ``encoder`` section (``conf/encoder/{name}.yaml``, the Hydra group
  ``encoder=``): the encoder whose embeddings *condition ZoomLDM*. Only
  :data:`CONDITIONING_ENCODERS` may be named there (the model was trained on UNI; Phikon-v2's
  1024-d embeddings would pass the width check and silently condition it on the wrong space).
- :class:`TileEncoderSection` is one entry of a list of baseline encoders (``encoders=[...]``):
  any name in the registry, with its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoomfeat.encoders.registry import EMBED_DIM, ENCODERS
from zoomfeat.runtime.config import check

#: encoders ZoomLDM can be conditioned on (``conf/encoder/{name}.yaml``)
CONDITIONING_ENCODERS = ("uni", "dinov2_vitl14_reg", "tiny")  # UNI: BRCA model; DINOv2-reg: NAIP
#: the encoder built for tests and the demo (a seeded random init is always allowed for it)
TINY = "tiny"

__all__ = ["CONDITIONING_ENCODERS", "EMBED_DIM", "ENCODERS", "EncoderSection", "TINY", "TileEncoderSection"]


@dataclass
class EncoderSection:
    """The SSL encoder whose embeddings condition ZoomLDM, and its weights."""

    #: uni | tiny
    name: str = "uni"
    #: local file/dir or hub id; null: the gated hub MahmoodLab/UNI (the tiny encoder: seeded random)
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        check(
            self.name in CONDITIONING_ENCODERS,
            f"encoder={self.name!r} is not an encoder: use one of {', '.join(CONDITIONING_ENCODERS)}"
            + (
                f" ({self.name!r} is a baseline encoder: list it in encoders=[...] instead)"
                if self.name in ENCODERS
                else ""
            ),
        )

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings (without building the model)."""
        return EMBED_DIM[self.name]

    @property
    def is_tiny(self) -> bool:
        return self.name == TINY


@dataclass
class TileEncoderSection:
    """One baseline tile encoder of a multi-encoder pass, and its weights."""

    #: a registry name (zoomfeat.encoders.ENCODERS)
    name: str = "uni"
    #: local file/dir or hub id; null: the registry's default hub repo (CTransPath: required)
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        check(
            self.name in ENCODERS,
            f"encoders: {self.name!r} is not an encoder: use any of {', '.join(ENCODERS)}",
        )

    @property
    def embed_dim(self) -> int:
        return EMBED_DIM[self.name]
