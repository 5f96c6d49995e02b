"""The trainer's and ``prepare``'s configurations: ``conf/train.yaml`` and ``conf/prepare.yaml`` as dataclasses.

The nesting is the YAML's (docs/ARCHITECTURE.md, "Configs"): ``ema.decay`` on the command line
is ``TrainConfig.ema.decay``, ``model=tiny`` selects the Hydra group ``conf/model/tiny.yaml``,
which becomes the ``model`` section, and ``encoder=tiny`` the ``encoder`` section of prepare's.
The entry points validate the composed config with
:func:`zoomfeat.runtime.config.load_config` (unknown keys refused with the known ones, types
converted, ranges checked in ``__post_init__``), so an option is added in one place: a field
here, with its default and comment in the YAML.

Python users build them directly; a section may be given by name::

    TrainConfig(data="prepared", out_dir="run", model="tiny", steps=100)
    PrepareConfig(out_dir="prepared", mags=["20x", "5x"], model="tiny", encoder="tiny")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zoomfeat.encoders.config import EncoderSection
from zoomfeat.model.config import ModelSection
from zoomfeat.runtime.config import check
from zoomfeat.runtime.device import PRECISIONS
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.training.shards.format import parse_mag


def _section(value: Any, cls: type) -> Any:
    """A section from a name (``"tiny"``), a mapping or the section itself (direct construction)."""
    if isinstance(value, str):
        return cls(name=value)
    if isinstance(value, Mapping):
        return cls(**dict(value))
    return value


def _check_precision(precision: str) -> None:
    check(
        precision == "auto" or precision in PRECISIONS,
        f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}",
    )


# ----------------------------------------------------------------------------------------------
# train


@dataclass
class EMASection:
    #: EMA of the UNet (the EMA copy is what sampling/extraction use)
    decay: float = 0.9999
    #: official LitEma: decay_t = min(decay, (1+n)/(10+n))
    warmup: bool = True

    def __post_init__(self) -> None:
        check(0.0 <= self.decay <= 1.0, f"ema.decay must be in [0, 1], got {self.decay}")


@dataclass
class SampleConfig:
    """Sample grid PNG per magnification at each checkpoint (rank 0)."""

    #: write the sample grids at each checkpoint
    enabled: bool = True
    #: conditions per magnification (fixed tiles of the data)
    n: int = 4
    #: sampler steps
    steps: int = 50
    #: classifier-free guidance scale (sampler convention e_u + s (e_c - e_u))
    guidance: float = 2.0
    #: ddim | plms
    sampler: str = "ddim"
    #: seed of the sample grids' noise
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            self.n >= 1 and self.steps >= 1,
            f"samples.n and samples.steps must be >= 1, got {self.n}, {self.steps}",
        )
        check(self.sampler in ("ddim", "plms"), f"samples.sampler must be ddim or plms, got {self.sampler!r}")


@dataclass
class TrainConfig:
    """``conf/train.yaml``: ``python -m zoomfeat.train data=DIR [key=value ...]``."""

    #: a bare argument is taken as `data`
    inputs: list[str] = field(default_factory=list)
    #: prepared data directory (required)
    data: str | None = None
    #: checkpoints/, train_log.jsonl; a re-run resumes from here
    out_dir: str = "zoomfeat_train"
    #: start from: official weights.ckpt | pretrained dir | hub id (default: model.checkpoint)
    init: str | None = None
    #: auto: continue from out_dir's latest checkpoint | false | a checkpoint path
    resume: Any = "auto"
    #: seed of the data order, dropout and noise (randomness depends only on seed and sample number)
    seed: int = 0
    #: optimiser steps in total (a resumed run continues up to this)
    steps: int = 100_000
    #: per process and micro-step
    batch_size: int = 8
    #: global batch = batch_size * grad_accum * processes
    grad_accum: int = 1
    #: AdamW
    lr: float = 2e-5
    #: linear warm-up
    warmup_steps: int = 1000
    #: torch's AdamW default (the official trainer's)
    weight_decay: float = 0.01
    #: AdamW (beta1, beta2)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: gradient clipping (off, as in the official trainer)
    max_grad_norm: float | None = None
    ema: EMASection = field(default_factory=EMASection)
    #: context dropout to zeros; null: the model config's (0.1)
    p_uncond: float | None = None
    #: train on these magnifications only (default: all in the data)
    mags: list[Any] | None = None
    #: sampling weight per magnification, e.g. {20x: 2, 5x: 1}; null: uniform
    mag_weights: Any = None
    #: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (GradScaler)
    precision: str = "auto"
    #: trade compute for memory in the UNet
    gradient_checkpointing: bool = False
    #: DataLoader processes reading shards
    num_workers: int = 4
    #: auto | cpu | cuda | mps (under torchrun: cuda:LOCAL_RANK)
    device: str = "auto"
    #: torch CPU threads of this process (intra- and inter-op); null: torch's default. Exact
    #: resume needs the same thread count as the original run
    threads: int | None = None
    #: DDP: a batch of 8x8 grids only leaves the summarizer's pad token unused
    ddp_find_unused_parameters: bool = True
    #: steps between checkpoints (and one at the end)
    checkpoint_every: int = 5000
    #: newest checkpoints kept (older ones deleted)
    keep_checkpoints: int = 3
    #: steps between train_log.jsonl lines / progress-bar updates
    log_every: int = 50
    #: debugging: reuse the first step's samples every step
    overfit_batch: bool = False
    #: tqdm progress bars
    progress: bool = True
    samples: SampleConfig = field(default_factory=SampleConfig)
    #: set to a path (.../weights.ckpt) to export a checkpoint to the released layout and exit
    export: str | None = None
    #: which checkpoint to export (default: out_dir's latest)
    checkpoint: str | None = None
    model: ModelSection = field(default_factory=ModelSection)

    def __post_init__(self) -> None:
        self.model = _section(self.model, ModelSection)
        self.ema = _section(self.ema, EMASection)
        self.samples = _section(self.samples, SampleConfig)
        self.betas = [float(b) for b in self.betas]
        if self.inputs:
            check(
                not self.data and len(self.inputs) == 1,
                f"give the training data directory once (data=DIR), got data={self.data!r} and inputs {list(self.inputs)}",
            )
            self.data, self.inputs = str(self.inputs[0]), []
        _check_precision(self.precision)
        for key in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            check(int(getattr(self, key)) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        check(self.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        check(self.threads is None or self.threads >= 1, f"threads must be >= 1 or null, got {self.threads}")
        check(len(self.betas) == 2, f"betas must be [beta1, beta2], got {self.betas}")
        check(
            self.p_uncond is None or 0.0 <= self.p_uncond <= 1.0,
            f"p_uncond must be in [0, 1], got {self.p_uncond}",
        )
        if self.mags is not None:
            try:
                [parse_mag(m) for m in self.mags]
            except ValueError as err:
                raise ConfigError(f"mags: {err}") from None

    @property
    def init_source(self) -> str | None:
        """The weights training starts from: ``init``, else ``model.checkpoint`` (None: random init)."""
        return self.init or self.model.checkpoint

    def require_data(self) -> str:
        """The training data directory; a :class:`ConfigError` saying how to give it when unset."""
        if not self.data:
            raise ConfigError(
                "no training data: pass data=DIR (a directory made by `python -m zoomfeat.prepare`)"
            )
        return str(self.data)


# ----------------------------------------------------------------------------------------------
# prepare


@dataclass
class ShardSection:
    """This job's part of the sorted slide list: every count-th from index."""

    #: this job's shard: 0 .. count - 1
    index: int = 0
    #: number of shards the sorted slide list is split into (1: no sharding)
    count: int = 1

    def __post_init__(self) -> None:
        check(
            self.count >= 1 and 0 <= self.index < self.count,
            f"shard.index must be in [0, shard.count), got {self.index}/{self.count}",
        )


@dataclass
class PrepareConfig:
    """``conf/prepare.yaml``: ``python -m zoomfeat.prepare SLIDES... out_dir=DIR [key=value ...]``."""

    #: slides, directories of slides, manifest CSVs (bare command-line arguments)
    inputs: list[str] = field(default_factory=list)
    #: the data directory (appendable: later runs add slides to it)
    out_dir: str = "zoomfeat_train_data"
    #: names (20x ... 0.15625x) or indices (0=20x, 1=10x, 2=5x, ...); held as sorted indices
    mags: list[Any] = field(default_factory=lambda: ["20x", "10x", "5x", "2.5x", "1.25x"])
    #: tissue fraction a tile (at its own magnification) needs to be kept
    min_tissue: float = 0.25
    #: override the slides' level-0 um/px (a manifest's mpp column wins)
    mpp: float | None = None
    #: extra keyword arguments of zoomfeat.slide.tissue.tissue_mask
    tissue: dict[str, Any] = field(default_factory=dict)
    #: seed of random weights (the tiny model/encoder, or allow_random_weights)
    seed: int = 0
    #: tiles per UNI / VQ call
    batch_size: int = 32
    #: DataLoader processes reading slide regions
    num_workers: int = 2
    #: auto | cpu | cuda | cuda:N | mps
    device: str = "auto"
    #: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    precision: str = "auto"
    #: pack per-slide files into shards of about this many tiles (0: never)
    pack_rows: int = 16384
    #: seeded random full-size model/encoder when no weights are given (smoke tests only; the
    #: tiny model and encoder always may)
    allow_random_weights: bool = False
    #: tqdm progress bars
    progress: bool = True
    shard: ShardSection = field(default_factory=ShardSection)
    #: supplies the (frozen) VQ encoder: model.checkpoint=... for its weights
    model: ModelSection = field(default_factory=ModelSection)
    #: uni | tiny (must match the model's SSL width: uni+zoomldm_brca, tiny+tiny)
    encoder: EncoderSection = field(default_factory=EncoderSection)

    def __post_init__(self) -> None:
        self.model = _section(self.model, ModelSection)
        self.encoder = _section(self.encoder, EncoderSection)
        self.shard = _section(self.shard, ShardSection)
        try:
            self.mags = sorted({parse_mag(m) for m in self.mags})
        except ValueError as err:
            raise ConfigError(f"mags: {err}") from None
        check(bool(self.mags), "mags is empty: name at least one magnification (e.g. mags=[20x,5x])")
        check(0.0 <= self.min_tissue <= 1.0, f"min_tissue must be in [0, 1], got {self.min_tissue}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        check(self.pack_rows >= 0, f"pack_rows must be >= 0, got {self.pack_rows}")
        check(self.mpp is None or self.mpp > 0, f"mpp must be > 0 or null, got {self.mpp}")
        _check_precision(self.precision)
