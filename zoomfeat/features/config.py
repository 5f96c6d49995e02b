"""The extraction configuration: ``conf/extract.yaml`` as a dataclass (docs/ARCHITECTURE.md, "Configs").

The nesting is the YAML's: ``features.timestep`` on the command line is
``ExtractConfig.features.timestep`` here, ``model=tiny`` selects the Hydra group ``conf/model/tiny.yaml``
which becomes ``ExtractConfig.model``. :func:`zoomfeat.runtime.config.load_config` validates a composed
config into it (unknown keys refused, types converted, ranges checked in ``__post_init__``), so a new
option is added in one place: a field here, with its ``#:`` help comment (``python -m zoomfeat.options
--write`` copies it into the YAML and docs/options.md).

:meth:`ExtractConfig.recipe` is the part that decides the numbers in a bag (model and encoder and
their weights, timestep, taps, ensemble, seed, tiling, tissue threshold, MPP override, precision);
its hash is stored in every bag and decides whether existing bags can be reused. Its keys and values
are those of the flat configuration of earlier versions, so bags written by them stay valid. Batch
size, workers, device, progress bars and output paths are not in it: they never change a feature
beyond floating-point rounding.

Python users build one with keyword arguments in the command line's names::

    ExtractConfig.from_kwargs(model="tiny", encoder="tiny", **{"features.timestep": 300})
    ExtractConfig(features=FeaturesSection(timestep=300))
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

from zoomfeat.encoders.config import EncoderSection
from zoomfeat.features.recipes import COND_PX, POOLINGS, Recipe, build_recipes, encoder_families
from zoomfeat.model.config import ModelSection
from zoomfeat.runtime.config import check, load_config, to_dict
from zoomfeat.runtime.device import PRECISIONS
from zoomfeat.runtime.units import BASE_MAG, PARENT_MAG_INDEX, TILE_PX, magnification

#: the bag sets a family may write (``bags.sets``): its 20x tiles, its 5x parents, each 20x row next to its parent's
BAG_SETS = ("20x", "5x", "fused")
#: how a fused set is delivered (``bags.fused``)
FUSED_MODES = ("file", "derived")


@dataclass
class SweepSection:
    """A grid of recipes: the Cartesian product of the non-empty lists (unset axes: the top-level values)."""

    #: timesteps of the sweep, e.g. [50, 200, 500]
    timestep: list[int] = field(default_factory=list)
    #: a list of tap lists, e.g. [[middle_block], [output_blocks.2]]
    taps: list[Any] = field(default_factory=list)
    #: poolings of the sweep, e.g. [mean, meanmax]
    pooling: list[str] = field(default_factory=list)
    #: noise-draw counts of the sweep, e.g. [1, 4]
    ensemble: list[int] = field(default_factory=list)
    #: conditioning input sizes of the sweep, e.g. [224, 256]
    cond_px: list[int] = field(default_factory=list)


@dataclass
class FeaturesSection:
    """The default feature recipe (family ``zoomldm``), further recipes and a recipe sweep.

    Every recipe's settings are part of the config hash stored in that recipe's bags
    (:mod:`zoomfeat.features.recipes`).
    """

    #: q_sample(z0, t, eps) at this timestep
    timestep: int = 200
    #: official UNet block names; pooled and concatenated in this order
    taps: list[str] = field(default_factory=lambda: ["middle_block", "output_blocks.4"])
    #: average the feature over k independent noise draws
    ensemble: int = 1
    #: pooling of each tap's (C, h, w) map: mean | max | meanmax | grid2
    pooling: str = "mean"
    #: the conditioning encoder's input size: 224 (resized tile) | 256 (native tile)
    cond_px: int = 224
    #: the default recipe's bag family; null = zoomldm
    name: str | None = None
    #: more recipes: partial {name, timestep, taps, ensemble, pooling, cond_px}; unset = the values above
    recipes: list[Any] = field(default_factory=list)
    sweep: SweepSection = field(default_factory=SweepSection)

    def __post_init__(self) -> None:
        check(len(self.taps) > 0, "features.taps must name at least one UNet block")
        check(len(set(self.taps)) == len(self.taps), f"features.taps has duplicates: {list(self.taps)}")
        check(0 <= self.timestep < 1000, f"features.timestep must lie in [0, 1000), got {self.timestep}")
        check(self.ensemble >= 1, f"features.ensemble must be >= 1, got {self.ensemble}")
        check(
            self.pooling in POOLINGS,
            f"features.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}",
        )
        check(
            self.cond_px in COND_PX,
            f"features.cond_px must be one of {', '.join(map(str, COND_PX))}, got {self.cond_px}",
        )


@dataclass
class TissueSection:
    #: tissue fraction a 20x tile needs to be kept
    min_tissue: float = 0.25

    def __post_init__(self) -> None:
        check(0 <= self.min_tissue <= 1, f"tissue.min_tissue must lie in [0, 1], got {self.min_tissue}")


@dataclass
class BagsSection:
    """How bags are stored (docs/cohorts.md); the features are the same, so it is not in the config hash."""

    #: storage dtype of the features: float16 (half the bytes, ~5e-4 relative rounding; a value beyond +-65504 fails the slide) | float32
    dtype: str = "float32"
    #: the sets each family writes, any of [20x, 5x, fused]: only their tiles are embedded (20x alone
    #: embeds no background child and no 5x tile; docs/cohorts.md, "Which sets cost what")
    sets: list[str] = field(default_factory=lambda: list(BAG_SETS))
    #: fused set: file (features_{family}_fused, read by TRIDENT/CLAM/STAMP as is) | derived (no file:
    #: readers build concat(20x row, its parent's 5x row) from the 20x bag's parent_idx; needs 20x and 5x in bags.sets)
    fused: str = "file"

    def __post_init__(self) -> None:
        from zoomfeat.bags import FEATURE_DTYPES

        check(
            self.dtype in FEATURE_DTYPES,
            f"bags.dtype must be one of {' | '.join(FEATURE_DTYPES)}, got {self.dtype!r}",
        )
        sets = [str(s) for s in (self.sets or [])]
        bad = [s for s in sets if s not in BAG_SETS]
        check(
            bool(sets) and not bad and len(set(sets)) == len(sets),
            f"bags.sets must be a non-empty list of distinct {' | '.join(BAG_SETS)}, got {self.sets!r}",
        )
        self.sets = [s for s in BAG_SETS if s in sets]  # canonical order
        check(
            self.fused in FUSED_MODES,
            f"bags.fused must be one of {' | '.join(FUSED_MODES)}, got {self.fused!r}",
        )
        check(
            not (self.fused == "derived" and "fused" in sets and not {"20x", "5x"} <= set(sets)),
            f"bags.fused=derived builds the fused rows from the 20x and 5x bags, but bags.sets={self.sets}: "
            "add both (bags.sets=[20x,5x,fused]) or set bags.fused=file",
        )

    def files(self) -> tuple[str, ...]:
        """The sets written as files, of ``20x | 5x | fused`` (a derived fused set has none)."""
        return tuple(s for s in self.sets if not (s == "fused" and self.fused == "derived"))


@dataclass
class ShardSection:
    """This job's part of the sorted slide list: every ``count``-th slide from ``index``."""

    #: this job's shard: 0 .. count - 1
    index: int = 0
    #: number of shards the sorted slide list is split into (1: no sharding)
    count: int = 1

    def __post_init__(self) -> None:
        check(self.count >= 1, f"shard.count must be >= 1, got {self.count}")
        check(
            0 <= self.index < self.count,
            f"shard.index must lie in [0, shard.count), got index={self.index} count={self.count}",
        )


@dataclass
class ExtractConfig:
    """Everything ``python -m zoomfeat.extract`` and :func:`zoomfeat.extract_slide` take.

    See ``conf/extract.yaml`` for the comments of each key; the recipe keys are documented in
    :meth:`recipe`.
    """

    #: the ZoomLDM and its weights (model.checkpoint=...)
    model: ModelSection = field(default_factory=ModelSection)
    #: the encoder that conditions ZoomLDM, and its weights (encoder.checkpoint=...)
    encoder: EncoderSection = field(default_factory=EncoderSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    #: extract ZoomLDM features (false: a plain multi-scale encoder extractor; ZoomLDM is not loaded)
    zoomldm: bool = True
    #: plain encoder bag families: null (the conditioning encoder's uni_*) | registry names [uni, phikon, ...]
    encoders: list[str] | None = None
    #: weights of listed encoders: {name: path or hub id}; unlisted = the registry's hub repo
    encoder_checkpoints: dict[str, Any] = field(default_factory=dict)
    tissue: TissueSection = field(default_factory=TissueSection)
    bags: BagsSection = field(default_factory=BagsSection)
    shard: ShardSection = field(default_factory=ShardSection)
    #: per-tile noise seed (with slide id, magnification, x, y)
    seed: int = 0
    #: 20x tile size; the 5x tile is the 4x4 block downsampled 4x
    tile_px: int = TILE_PX
    #: override the slides' level-0 um/px
    mpp: float | None = None
    #: slide reader: auto (chosen by what the path is) | openslide | dicom | wsidicom | tiffslide | image
    #: (docs/slides.md)
    reader: str = "auto"
    #: fsspec options of remote slides (s3://, gs://, https://), e.g. {endpoint_url: ..., anon: true};
    #: credentials also come from the usual environment
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: copy each remote slide into this directory before reading it (the next one downloads meanwhile;
    #: removed when done; costs disk for two slides); null: read remote slides straight from storage
    cache_dir: str | None = None
    #: tile on TRIDENT's nominal magnification (256/1024 level-0 px on any 0.3-0.6 um/px scan) instead of
    #: round(256 * 0.5 / mpp) (docs/ARCHITECTURE.md, "Slides and tiles")
    trident_compat: bool = False
    #: tiles per model call
    batch_size: int = 32
    #: processes reading parent regions, started once per run: an int or "auto" (0 on CPU, <= 8 with a GPU)
    num_workers: Any = "auto"
    #: auto | cpu | cuda | cuda:N | mps
    device: str = "auto"
    #: one worker process per device, slides shared out: null (one process on ``device``) | all |
    #: a list ([0,1,2,3] = cuda:0..3, [cpu,cpu]); see zoomfeat.features.devices
    devices: Any = None
    #: fp32 | bf16 | fp16 (autocast; bf16 is the GPU speed setting)
    precision: str = "fp32"
    #: torch.compile the models (GPU; minutes of warm-up)
    compile: bool = False
    #: replace bags written with another config (complete bags with this config are kept)
    overwrite: bool = False
    #: tile store directory (docs/tile-store.md): each slide's VQ latents and embeddings, so that later recipes read it instead of the slide and run only the UNet; disk: ~58 KB per kept 20x tile at full size (float32 latents 48 KB + UNI embeddings; ~51 KB with the tiny models); null: no store
    store: str | None = None
    #: build models without weights (seeded random; smoke tests only)
    allow_random_weights: bool = False
    #: write {out_dir}/previews/{slide_id}.png (on the command line the default is the value of demo)
    preview: bool = False
    #: tqdm progress bars
    progress: bool = True
    #: the built-in demo slide with model=tiny encoder=tiny + a preview PNG (command line only)
    demo: bool = False
    #: where the bag directories go (zoomfeat_demo with demo=true)
    out_dir: str = "zoomfeat_features"
    #: slides, directories of slides, manifest CSVs (the command line's bare arguments)
    inputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        if str(self.num_workers) != "auto":
            try:
                self.num_workers = int(self.num_workers)
            except (TypeError, ValueError):
                check(False, f"num_workers must be an integer or 'auto', got {self.num_workers!r}")
            check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        check(
            self.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        check(self.mpp is None or self.mpp > 0, f"mpp must be positive, got {self.mpp}")
        from zoomfeat.slide.backends import check_reader

        check_reader(self.reader)  # a ConfigError naming the readers
        check(self.tile_px > 0, f"tile_px must be a positive integer, got {self.tile_px}")
        # ConfigError for a bad recipe, sweep, name or encoder list, at load time
        check(
            bool(self.recipes() or self.encoder_families()),
            "nothing to extract: zoomldm=false and encoders=[] (list an encoder, or set zoomldm=true)",
        )

    # ------------------------------------------------------------------------------ building
    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ExtractConfig:
        """Build from keyword arguments in the command line's names.

        ``model="tiny"`` / ``encoder="tiny"`` select a group file (``conf/model/tiny.yaml``) as the
        command line does; dotted keys (``**{"features.timestep": 300}``) and nested dicts
        (``features={"timestep": 300}``) set single keys. Unknown keys raise :class:`ConfigError`.
        """
        return cls._merged({}, kwargs)

    def replace(self, **kwargs: Any) -> ExtractConfig:
        """A copy with ``kwargs`` (as in :meth:`from_kwargs`) applied on top of this config."""
        return self._merged(self.to_dict(), kwargs)

    @classmethod
    def _merged(cls, base: dict[str, Any], kwargs: dict[str, Any]) -> ExtractConfig:
        data = copy.deepcopy(base)
        groups = {k: v for k, v in kwargs.items() if k in ("model", "encoder") and isinstance(v, str)}
        for group, name in groups.items():  # group choices first, so model.checkpoint= applies on top
            data[group] = group_section(group, name)
        for key, value in kwargs.items():
            if key in groups:
                continue
            *parents, leaf = key.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    check(False, f"extract: {key!r}: {part!r} is not a section")
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if isinstance(value, dict) and isinstance(node.get(leaf), dict):
                node[leaf] = {**node[leaf], **value}
            else:
                node[leaf] = list(value) if isinstance(value, tuple) else value
        return load_config(cls, data, "extract")

    # ------------------------------------------------------------------------------ views
    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts (the YAML's shape)."""
        return to_dict(self)

    def workers_for(self, device_type: str) -> int:
        """Resolved ``num_workers`` (``auto``: 0 on CPU, min(8, cpus // 2) otherwise)."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        if device_type == "cpu":
            return 0
        return max(1, min(8, (os.cpu_count() or 2) // 2))

    def recipes(self) -> list[Recipe]:
        """The ZoomLDM recipes to extract, the default (``zoomldm``) first; ``[]`` with ``zoomldm=false``
        (:func:`zoomfeat.features.recipes.build_recipes`)."""
        return build_recipes(self)

    def encoder_families(self) -> dict[str, str]:
        """``{bag family: encoder registry name}`` of the plain encoder bags
        (:func:`zoomfeat.features.recipes.encoder_families`)."""
        return encoder_families(self)

    def recipe(self) -> dict[str, Any]:
        """The default recipe's (family ``zoomldm``) feature-defining settings (weights identities
        are added by the pipeline; the other families' dicts derive from this one in
        :mod:`zoomfeat.features.recipes`).

        Keys and values are exactly those of the flat configuration of earlier versions (``mag``
        and ``parent_mag`` are the method's fixed 20x tile and 5x parent), so the config hash of
        existing bags does not change.
        """
        return {
            "model": self.model.name,
            "model_checkpoint": self.model.checkpoint,
            "encoder": self.encoder.name,
            "encoder_checkpoint": self.encoder.checkpoint,
            "timestep": int(self.features.timestep),
            "taps": [str(t) for t in self.features.taps],
            "ensemble": int(self.features.ensemble),
            "seed": int(self.seed),
            "tile_px": int(self.tile_px),
            "mag": float(BASE_MAG),
            "parent_mag": float(magnification(PARENT_MAG_INDEX)),
            "min_tissue": float(self.tissue.min_tissue),
            "mpp": None if self.mpp is None else float(self.mpp),
            "precision": self.precision,
            # issue 10: tiles on an integer lattice (coords multiples of patch_size_level0); bags of the
            # earlier float lattice lack this key, so their hash differs and they are refused
            "lattice": "trident" if self.trident_compat else "integer",
            # issue 12: only a non-default pooling / conditioning size enters the dict, so the default
            # recipe's hash stays that of earlier versions
            **({"pooling": self.features.pooling} if self.features.pooling != "mean" else {}),
            **({"cond_px": int(self.features.cond_px)} if self.features.cond_px != 224 else {}),
        }


def group_section(group: str, name: str) -> dict[str, Any]:
    """The section a Hydra group choice (``model=tiny``) gives: ``conf/{group}/{name}.yaml``.

    A name without a group file (e.g. a model config YAML path) gives ``{"name": name}``.
    """
    from omegaconf import OmegaConf

    from zoomfeat.runtime.config import plain_dict
    from zoomfeat.runtime.resources import config_dir

    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        return {"name": name}
    return plain_dict(OmegaConf.load(path))


__all__ = [
    "EncoderSection",
    "ExtractConfig",
    "FeaturesSection",
    "ModelSection",
    "SweepSection",
    "ShardSection",
    "TissueSection",
    "group_section",
]
