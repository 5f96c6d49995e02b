"""The extraction configuration as a plain dataclass (the library never sees Hydra objects).

:meth:`ExtractConfig.recipe` is the part that decides the numbers in a bag (model and encoder
and their weights, timestep, taps, ensemble, seed, tiling, tissue threshold, MPP override,
precision); its hash is stored in every bag and decides whether existing bags can be reused.
Batch size, workers, device, progress bars and output paths are not in it: they never change
a feature beyond floating-point rounding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_TAPS = ("middle_block", "output_blocks.4")

#: fields of ExtractConfig that are part of the recipe (the config hash)
RECIPE_FIELDS = (
    "model",
    "model_checkpoint",
    "encoder",
    "encoder_checkpoint",
    "timestep",
    "taps",
    "ensemble",
    "seed",
    "tile_px",
    "mag",
    "parent_mag",
    "min_tissue",
    "mpp",
    "precision",
)

#: ``features.timestep``-style keys (the CLI's names) -> field names
ALIASES = {
    "features.timestep": "timestep",
    "features.taps": "taps",
    "features.ensemble": "ensemble",
    "model.name": "model",
    "model.checkpoint": "model_checkpoint",
    "encoder.name": "encoder",
    "encoder.checkpoint": "encoder_checkpoint",
    "tissue.min_tissue": "min_tissue",
}


@dataclass
class ExtractConfig:
    """Everything :func:`zoomfeat.extract_slide` takes (see the CLI's ``conf/extract.yaml``).

    Attributes:
        model: ZoomLDM config name (``zoomldm_brca`` | ``tiny``) or a config YAML path.
        model_checkpoint: native dir, official ``.ckpt`` or hub id; ``None`` needs
            ``allow_random_weights`` (the ``tiny`` model is always allowed a seeded random init).
        encoder: ``uni`` | ``tiny``; encoder_checkpoint: local file/dir or hub id (UNI's
            default: the gated ``MahmoodLab/UNI``).
        timestep: diffusion timestep the latents are noised to.
        taps: official UNet block names whose globally average-pooled outputs are concatenated.
        ensemble: average the feature over this many independent noise draws.
        seed: seeds the per-tile noise (with slide id, magnification and tile x, y).
        tile_px, mag, parent_mag: tile size and the two magnifications (parent = 4x4 children).
        min_tissue: tissue fraction a 20x tile needs to be kept.
        mpp: override the slides' resolution (um/px at level 0).
        precision: ``fp32`` | ``bf16`` | ``fp16`` (autocast; bf16/fp16 on CUDA, bf16 on CPU).
        batch_size: tiles per model call; num_workers: DataLoader worker processes reading
            parent regions (``auto``: none on CPU, where reading is ~1% of the work and workers
            would only compete with the compute threads; up to 8 beside a GPU);
            device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:1`` ...
        compile: ``torch.compile`` the encoder, VQ, summarizer and UNet (GPU; slow to start).
        overwrite: replace bags written with another config (without it they stop the run);
            bags already complete with this config are still reused, so a killed overwrite
            run resumes. Delete bags to force recomputing them.
        allow_random_weights: build models without weights (seeded random; smoke tests only).
        preview: write ``previews/{slide_id}.png`` (tissue, tile grid, feature PCA colours).
        progress: tqdm progress bars.
    """

    model: str = "zoomldm_brca"
    model_checkpoint: str | None = None
    encoder: str = "uni"
    encoder_checkpoint: str | None = None
    timestep: int = 200
    taps: tuple[str, ...] = DEFAULT_TAPS
    ensemble: int = 1
    seed: int = 0
    tile_px: int = 256
    mag: float = 20.0
    parent_mag: float = 5.0
    min_tissue: float = 0.25
    mpp: float | None = None
    precision: str = "fp32"
    batch_size: int = 32
    num_workers: int | str = "auto"
    device: str = "auto"
    compile: bool = False
    overwrite: bool = False
    allow_random_weights: bool = False
    preview: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.taps, str):
            self.taps = (self.taps,)
        self.taps = tuple(str(t) for t in self.taps)
        if not self.taps:
            raise ValueError("features.taps must name at least one UNet block")
        if len(set(self.taps)) != len(self.taps):
            raise ValueError(f"features.taps has duplicates: {list(self.taps)}")
        self.timestep = int(self.timestep)
        if not 0 <= self.timestep < 1000:
            raise ValueError(f"features.timestep must lie in [0, 1000), got {self.timestep}")
        self.ensemble = int(self.ensemble)
        if self.ensemble < 1:
            raise ValueError(f"features.ensemble must be >= 1, got {self.ensemble}")
        self.batch_size = int(self.batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if str(self.num_workers) != "auto":
            self.num_workers = int(self.num_workers)
        if self.num_workers != "auto" and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.mpp is not None:
            self.mpp = float(self.mpp)
            if self.mpp <= 0:
                raise ValueError(f"mpp must be positive, got {self.mpp}")
        if not 0 <= float(self.min_tissue) <= 1:
            raise ValueError(f"tissue.min_tissue must lie in [0, 1], got {self.min_tissue}")
        self.min_tissue = float(self.min_tissue)
        self.seed = int(self.seed)
        self.tile_px = int(self.tile_px)
        self.mag, self.parent_mag = float(self.mag), float(self.parent_mag)
        for key in ("model_checkpoint", "encoder_checkpoint"):
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, str(value))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ExtractConfig:
        """Build from keyword arguments; CLI-style names (``features.timestep``) are accepted too."""
        names = {f.name for f in fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in kwargs.items():
            key = ALIASES.get(key, key.replace("-", "_"))
            if key not in names:
                raise TypeError(
                    f"unknown extraction setting {key!r}; known: {', '.join(sorted(names - {'extra'}))}"
                )
            clean[key] = value
        return cls(**clean)

    def workers_for(self, device_type: str) -> int:
        """Resolved ``num_workers`` (``auto``: 0 on CPU, min(8, cpus // 2) otherwise)."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        if device_type == "cpu":
            return 0
        import os

        return max(1, min(8, (os.cpu_count() or 2) // 2))

    def replace(self, **kwargs: Any) -> ExtractConfig:
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["taps"] = list(self.taps)
        return d

    def recipe(self) -> dict[str, Any]:
        """The feature-defining settings (weights identities are added by the pipeline)."""
        d = self.to_dict()
        return {k: d[k] for k in RECIPE_FIELDS}
