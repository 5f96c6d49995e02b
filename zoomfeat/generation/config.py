"""``conf/generate.yaml`` as a dataclass (the YAML *is* this dataclass; unknown keys are refused).

Sections: ``model`` (the Hydra group ``conf/model/*.yaml``), ``encoder`` (``conf/encoder/*.yaml``),
``region`` (where on the slide the reference/guide comes from), ``patch``, ``large``, ``post``
(seam post-processing), ``superres``, ``cdm``. Defaults are the official notebooks'
(docs/generation.md, "Joint multi-scale sampling", "Super-resolution", "CDM").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoomfeat.encoders.config import EncoderSection
from zoomfeat.generation.large import JointOptions
from zoomfeat.model.config import ModelSection
from zoomfeat.runtime.config import check
from zoomfeat.runtime.device import PRECISIONS
from zoomfeat.runtime.units import MagIndex, mag_index

MODES = ("patch", "large", "superres", "cdm_train")


@dataclass
class RegionSection:
    #: level-0 x of the region's top-left corner
    x0: float = 0.0
    #: level-0 y of the region's top-left corner
    y0: float = 0.0
    #: magnification of the reference patch (patch mode) or of the guide (large mode): 10x, 5x, 2.5x, 1.25x ...
    mag: str = "5x"

    def index(self) -> MagIndex:
        try:
            return mag_index(float(str(self.mag).lower().rstrip("x")))
        except ValueError as err:
            from zoomfeat.runtime.errors import ConfigError

            raise ConfigError(f"region.mag={self.mag!r}: {err}") from None


@dataclass
class PatchSection:
    #: patches to sample
    count: int = 4
    #: sampler steps (PLMS: steps + 1 UNet calls)
    steps: int = 50
    #: plms (the notebooks) | ddim
    sampler: str = "plms"
    #: sampler convention e_u + s (e_c - e_u)
    guidance: float = 2.0
    #: slide (the region's UNI grid) | cdm (CDM-sampled contexts; needs cdm.checkpoint)
    source: str = "slide"


@dataclass
class LargeSection:
    # the joint-sampling defaults live once, in JointOptions (docs/generation.md, "Joint multi-scale sampling")
    #: timestep the joint sampling starts from
    t0: int = JointOptions.t0
    #: S = t0 / stride sampling steps
    stride: int = JointOptions.stride
    #: K inner constraint iterations per tile and step
    n_steps: int = JointOptions.n_steps
    #: finite-difference step of the constraint
    h: float = JointOptions.h
    #: step size of the constraint's update of x_t
    lr: float = JointOptions.lr
    #: large-image convention (w + 1) e_c - w e_u (w = 2 is s = 3)
    guidance: float = JointOptions.guidance
    #: tiles per chunk (memory bound; the result does not depend on it)
    batch_size: int = JointOptions.batch_size
    #: c: sqrt(1 - abar_p) ([C] notebook) | r: sqrt(1 - abar_p - btilde) ([R] post-processing, [F])
    noise_term: str = JointOptions.noise_term
    #: dataloader: standardise per position (pool the guide to 8x8 first) | raw: as loaded ([C])
    ssl_norm: str = "dataloader"
    #: 0: UNet fed t, schedule at t-1 (official); 1: UNet fed t-1
    t_offset: int = JointOptions.t_offset
    #: large decode: 64x64 latent windows every this many latent px (16: official)
    decode_window_stride: int = 16
    #: large decode: Gaussian blending weight of the windows
    decode_sigma: float = 0.8
    #: large decode: windows decoded at once
    decode_batch_size: int = 16
    #: seam post-processing (section post)
    postprocess: bool = False
    #: also write a tiled pyramidal TIFF (QuPath, openslide)
    tiff: bool = True
    #: deflate | jpeg | none
    tiff_compression: str = "deflate"

    def joint_options(self) -> JointOptions:
        """The joint-sampling options these settings describe."""
        return JointOptions(
            t0=self.t0,
            stride=self.stride,
            n_steps=self.n_steps,
            h=self.h,
            lr=self.lr,
            guidance=self.guidance,
            batch_size=self.batch_size,
            noise_term=self.noise_term,
            t_offset=self.t_offset,
        )


@dataclass
class PostSection:
    #: timestep the seam post-processing starts from
    t0: int = 300
    #: S = t0 / stride sampling steps
    stride: int = 50
    #: large-image convention (w + 1) e_c - w e_u
    guidance: float = 2.0
    #: windows per UNet call (the official code uses all at once)
    batch_size: int = 16
    #: parity option: the official post-processing runs on the live (non-EMA) UNet
    live_weights: bool = False


@dataclass
class SuperresSection:
    #: the low-magnification image (PNG/JPEG, 256x256 RGB); null: the slide region at region.mag
    image: str | None = None
    #: optimisation steps of the condition inversion
    inversion_steps: int = 200
    #: learning rate of the condition inversion
    inversion_lr: float = 0.1
    #: parity option: the [C] inversion runs on the live (non-EMA) UNet
    live_weights: bool = False
    #: timestep the constrained sampling starts from
    t0: int = 1000
    #: S = t0 / stride sampling steps
    stride: int = 50
    #: K inner constraint iterations per step
    n_steps: int = 5
    #: finite-difference step of the constraint
    h: float = 0.005
    #: step size of the constraint's update of x_t
    lr: float = 0.5
    #: guidance scale of the constrained sampling
    guidance: float = 2.0
    #: tiles per UNet call (memory bound)
    batch_size: int = 2


@dataclass
class CDMSection:
    #: DiT weights: a bare state_dict or a checkpoint with "ema" (.pt/.pth/.safetensors), or a cdm_train run dir
    checkpoint: str | None = None
    #: S | B | L | XL (or DiT-B ...)
    variant: str = "B"
    #: respaced DDIM steps of the CDM
    respacing: int = 200
    #: LDM guidance (sampler convention) with CDM contexts (the official FID script's 1.75)
    guidance: float = 1.75
    #: magnification to sample at (default: region.mag)
    mag: str | None = None


@dataclass
class CDMTrainSection:
    """``mode=cdm_train``: train the CDM on ``prepare``'s shards (official recipe, docs/generation.md "CDM")."""

    #: prepared data directory (python -m zoomfeat.prepare)
    data: str | None = None
    #: optimiser steps in total (a resumed run continues up to this)
    steps: int = 1000
    #: the global batch (official: 256), split over the ranks
    batch_size: int = 256
    #: AdamW, weight decay 0, constant
    lr: float = 1e-4
    #: EMA decay of the DiT weights (what cdm.checkpoint loads)
    ema_decay: float = 0.9999
    #: out_dir/checkpoints/step-N (the trainer's format; cdm_ema.safetensors = what cdm.checkpoint loads)
    checkpoint_every: int = 5000
    #: newest checkpoints kept (older ones deleted)
    keep_checkpoints: int = 3
    #: steps between out_dir/train_log.jsonl lines
    log_every: int = 100
    #: auto: continue from out_dir's latest checkpoint | false | a checkpoint path (as train's resume)
    resume: Any = "auto"
    #: trade compute for memory in the DiT
    grad_checkpointing: bool = False
    #: torch CPU threads of this process; null: torch's default. Exact resume needs the original's
    threads: int | None = None


@dataclass
class GenerateConfig:
    #: bare command-line arguments; the first is taken as `slide`
    inputs: list[str] = field(default_factory=list)
    #: patch | large | superres | cdm_train
    mode: str = "patch"
    #: slide (or image, superres) to read the region from; default: the first bare argument
    slide: str | None = None
    #: PNGs (+ pyramidal TIFF for large images) and a JSON summary
    out_dir: str = "generated"
    #: file stem of the outputs (default: <slide stem>_<mode>)
    name: str | None = None
    #: auto | cpu | cuda | cuda:N | mps
    device: str = "auto"
    #: fp32 | bf16 | fp16 (autocast) | auto
    precision: str = "fp32"
    #: every random draw comes from this seed
    seed: int = 0
    #: print the request's UNet/VQ call counts and FLOPs, build nothing
    dry_run: bool = False
    #: progress bars with the model evaluations left
    progress: bool = True
    #: smoke tests only: seeded random ZoomLDM/encoder weights when none are given
    allow_random_weights: bool = False
    #: architecture and weights (model.checkpoint=...)
    model: ModelSection = field(default_factory=ModelSection)
    #: SSL encoder of the conditioning grid
    encoder: EncoderSection = field(default_factory=EncoderSection)
    #: where the reference (patch) or guide (large) region is
    region: RegionSection = field(default_factory=RegionSection)
    #: mode=patch: 256 px patches
    patch: PatchSection = field(default_factory=PatchSection)
    #: mode=large: joint multi-scale sampling (defaults of the official notebook)
    large: LargeSection = field(default_factory=LargeSection)
    #: seam post-processing (large and superres)
    post: PostSection = field(default_factory=PostSection)
    #: mode=superres: 4x super-resolution of a low-magnification image
    superres: SuperresSection = field(default_factory=SuperresSection)
    #: Conditioning Diffusion Model (patch.source=cdm)
    cdm: CDMSection = field(default_factory=CDMSection)
    cdm_train: CDMTrainSection = field(default_factory=CDMTrainSection)

    def __post_init__(self):
        check(self.mode in MODES, f"mode={self.mode!r}: use one of {', '.join(MODES)}")
        check(
            self.precision == "auto" or self.precision in PRECISIONS,
            f"precision={self.precision!r}: use auto or one of {', '.join(PRECISIONS)}",
        )
        check(self.patch.count >= 1 and self.patch.steps >= 1, "patch.count and patch.steps must be >= 1")
        check(
            self.patch.sampler in ("plms", "ddim"), f"patch.sampler={self.patch.sampler!r}: use plms or ddim"
        )
        check(self.patch.source in ("slide", "cdm"), f"patch.source={self.patch.source!r}: use slide or cdm")
        check(self.large.noise_term in ("c", "r"), f"large.noise_term={self.large.noise_term!r}: use c or r")
        check(
            self.large.ssl_norm in ("dataloader", "raw"),
            f"large.ssl_norm={self.large.ssl_norm!r}: use dataloader or raw",
        )
        check(self.large.t0 % self.large.stride == 0, "large.t0 must be a multiple of large.stride")
        check(
            self.superres.t0 % self.superres.stride == 0, "superres.t0 must be a multiple of superres.stride"
        )
        check(self.post.t0 % self.post.stride == 0, "post.t0 must be a multiple of post.stride")
        check(
            self.large.decode_window_stride in (8, 16, 32, 64) and 64 % self.large.decode_window_stride == 0,
            "large.decode_window_stride must divide 64 (16 is the official)",
        )
        check(
            self.large.tiff_compression in ("deflate", "jpeg", "none"),
            "large.tiff_compression: deflate | jpeg | none",
        )
        check(self.cdm.respacing >= 1, "cdm.respacing must be >= 1")
        check(
            self.cdm_train.steps >= 1 and self.cdm_train.batch_size >= 1,
            "cdm_train.steps and batch_size must be >= 1",
        )
        check(
            self.cdm_train.checkpoint_every >= 1 and self.cdm_train.log_every >= 1,
            "cdm_train.checkpoint_every and log_every must be >= 1",
        )
        check(self.cdm_train.keep_checkpoints >= 0, "cdm_train.keep_checkpoints must be >= 0")
        check(
            self.cdm_train.threads is None or self.cdm_train.threads >= 1,
            "cdm_train.threads must be >= 1 or null",
        )
        for sec in (self.large, self.superres):
            check(sec.batch_size >= 1 and sec.n_steps >= 0, "batch_size must be >= 1 and n_steps >= 0")
