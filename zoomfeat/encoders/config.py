"""The ``encoder`` config section: ``conf/encoder/{name}.yaml`` (the Hydra group ``encoder=``)."""

from __future__ import annotations

from dataclasses import dataclass

from zoomfeat.runtime.config import check

#: encoder names (``conf/encoder/{name}.yaml``)
ENCODERS = ("uni", "tiny")
#: embedding width per encoder name (known without building the model)
EMBED_DIM = {"uni": 1024, "tiny": 32}
#: the encoder built for tests and the demo (a seeded random init is always allowed for it)
TINY = "tiny"


@dataclass
class EncoderSection:
    """The SSL encoder whose embeddings condition ZoomLDM, and its weights."""

    #: uni | tiny
    name: str = "uni"
    #: local file/dir or hub id; null: the gated hub MahmoodLab/UNI (the tiny encoder: seeded random)
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        check(
            self.name in ENCODERS,
            f"encoder={self.name!r} is not an encoder: use one of {', '.join(ENCODERS)}",
        )

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings (without building the model)."""
        return EMBED_DIM[self.name]

    @property
    def is_tiny(self) -> bool:
        return self.name == TINY
