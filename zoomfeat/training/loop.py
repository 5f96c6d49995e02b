"""The ZoomLDM trainer: UNet + summarizer on prepared multi-scale shards, VQ frozen.

Objective (the official LatentDiffusion training step): for a latent z0 with UNI grid c at
magnification m, draw t ~ U{0..999} and eps ~ N(0, I), form x_t = q_sample(z0, t, eps) and
minimise ||eps - UNet(x_t, t, ctx)||^2 where ctx = Summarizer(c, m), replaced by zeros with
probability ``p_uncond`` (0.1; classifier-free guidance). Magnifications are drawn uniformly per
sample (``mag_weights`` to change that). AdamW (lr 2e-5, linear warm-up over 1,000 steps), EMA
0.9999 of the UNet (the official LitEma warm-up), gradient accumulation, optional gradient
checkpointing, bf16/fp16 autocast on GPU (GradScaler for fp16).

Multi-GPU: run under ``torchrun`` (DDP; gloo on CPU, nccl on CUDA). Each rank draws a distinct
slice of every step's global batch; only rank 0 writes. Every random choice of a sample is a
function of (seed, sample number) -- see :mod:`zoomfeat.training.dataset` -- so a resumed run
continues the uninterrupted one exactly and the result does not depend on how the global batch
is split over ranks and accumulation steps.

Checkpoints (:mod:`zoomfeat.training.checkpoint`) are ZoomLDM pretrained directories holding the
EMA UNet (what sampling and feature extraction use, as in the released checkpoint), with the
training state in ``trainer/`` beside it, written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoomfeat.training import checkpoint as ckpt_io
from zoomfeat.training.dataset import MultiScaleDataset, StepBatchSampler, make_loader
from zoomfeat.training.ema import EMA
from zoomfeat.training.shards import MAG_NAMES, ShardIndex

log = logging.getLogger("zoomfeat.train")

TRAINER_FORMAT = 1


@dataclass
class SampleConfig:
    """Sample grids written at every checkpoint (rank 0), one PNG per magnification."""

    enabled: bool = True
    n: int = 4  # conditions per magnification (taken from the data at fixed positions)
    steps: int = 50
    guidance: float = 2.0
    sampler: str = "ddim"
    seed: int = 0


@dataclass
class TrainConfig:
    data_dir: str
    out_dir: str
    model: str = "zoomldm_brca"  # architecture: a conf/model name (or a model yaml)
    init: str | None = None  # official .ckpt / pretrained dir / hub id to start from
    seed: int = 0
    steps: int = 100_000  # optimiser steps in total (a resumed run continues up to this)
    batch_size: int = 8  # per rank and micro-step
    grad_accum: int = 1
    lr: float = 2e-5
    warmup_steps: int = 1000
    weight_decay: float = 0.01  # torch's AdamW default, which the official trainer uses
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = None
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    p_uncond: float | None = None  # context dropout; None: the model config's (0.1)
    mags: list[Any] | None = None  # train on these magnifications only (default: all in the data)
    mag_weights: Any = None  # None: uniform over magnifications
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    num_workers: int = 4
    device: str = "auto"
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    log_every: int = 50
    resume: Any = "auto"  # auto (resume from out_dir if it has a checkpoint) | false | a checkpoint path
    overfit_batch: bool = False  # reuse step 0's samples (noise, t included) every step
    progress: bool = True
    ddp_find_unused_parameters: bool = True
    samples: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if isinstance(self.samples, Mapping):
            self.samples = SampleConfig(**dict(self.samples))
        self.betas = tuple(float(b) for b in self.betas)
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        for key in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.p_uncond is not None and not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond}")


# ----------------------------------------------------------------------------------------------
# distributed set-up


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Rank / world size from torchrun's environment; the process group (gloo on CPU, nccl on
    CUDA) when there is more than one process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def resolve_precision(precision: str, device: torch.device) -> str:
    if device.type != "cuda":
        if precision == "fp16":
            raise ValueError("precision=fp16 needs a CUDA device (GradScaler); use fp32 or bf16 on CPU")
        return "fp32" if precision == "auto" else precision
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast_ctx(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16
    )


# ----------------------------------------------------------------------------------------------
# model set-up


def _model_class():
    from zoomfeat.model import ZoomLDM

    return ZoomLDM


def architecture(model: nn.Module) -> dict[str, Any]:
    """The (normalised) architecture of a model: ``model.config`` (unet, vq, summarizer, diffusion)."""
    return dict(getattr(model, "config", {}) or {})


def expected_architecture(model_name: Any) -> dict[str, Any]:
    """Normalised architecture of a model config (name in conf/model, or a YAML), without building it."""
    from zoomfeat.model.checkpoint import normalize_arch, read_config

    return normalize_arch(read_config(model_name)[1])


def _arch_summary(arch: Mapping[str, Any]) -> str:
    def find(d: Any, key: str) -> Any:
        if isinstance(d, Mapping):
            if key in d:
                return d[key]
            for v in d.values():
                r = find(v, key)
                if r is not None:
                    return r
        return None

    keys = (
        "model_channels",
        "channel_mult",
        "context_dim",
        "input_channels",
        "hidden_channels",
        "num_layers",
        "n_embed",
        "ch",
    )
    parts = [f"{k}={find(arch, k)}" for k in keys if find(arch, k) is not None]
    return ", ".join(parts) or json.dumps(arch, sort_keys=True, default=str)[:300]


def _label(model_name: Any) -> str:
    return str(model_name.get("name", "custom")) if isinstance(model_name, Mapping) else str(model_name)


def check_architecture(model: nn.Module, model_name: Any, source: str) -> None:
    """Clear error when ``model`` (loaded from ``source``) is not the ``model_name`` architecture."""
    want = expected_architecture(model_name)
    got = architecture(model)
    model_name = _label(model_name)
    if json.dumps(got, sort_keys=True, default=str) != json.dumps(want, sort_keys=True, default=str):
        raise ValueError(
            f"init checkpoint {source} has another architecture than model={model_name}: "
            f"checkpoint [{_arch_summary(got)}] vs model={model_name} [{_arch_summary(want)}]. "
            f"Pick the model config that matches the checkpoint (e.g. model=tiny) or another init."
        )


def load_init(init: str, model_name: Any) -> nn.Module:
    """A model to start training from: official ``.ckpt`` (config beside it, or ``model_name``),
    pretrained directory, or hub id; the architecture must be ``model_name``'s."""
    ZoomLDM = _model_class()
    try:
        model = ZoomLDM.load(init, config=model_name)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(
            f"init checkpoint {init} cannot be loaded as model={_label(model_name)}: {err}"
        ) from err
    check_architecture(model, model_name, str(init))
    return model


def build_model(cfg: TrainConfig) -> nn.Module:
    ZoomLDM = _model_class()
    if cfg.init:
        return load_init(str(cfg.init), cfg.model)
    return ZoomLDM.from_config(cfg.model, seed=cfg.seed)


def align_vq(model: nn.Module, index: ShardIndex, cfg: TrainConfig) -> None:
    """Make sure the model's (frozen) VQ is the one that encoded the data.

    The shards' latents only mean something to the VQ that made them: sample grids decode with
    it and feature extraction encodes with it. Training from scratch (no ``init``) takes the VQ
    weights from the checkpoint ``prepare`` used (``dataset.json``'s ``vq_checkpoint``); any other
    mismatch is an error.
    """
    from zoomfeat.training.prepare import vq_fingerprint

    want = index.info.get("vq")
    if not want:
        return
    have = vq_fingerprint(model)
    if have == want:
        return
    source = str(index.info.get("vq_checkpoint") or "")
    loadable = source and not source.startswith("random-init") and (Path(source).exists() or "/" in source)
    if not cfg.init and loadable:
        ZoomLDM = _model_class()
        donor = ZoomLDM.load(source, config=cfg.model)
        model.vq.load_state_dict(donor.vq.state_dict())
        if vq_fingerprint(model) == want:
            log.info(
                "VQ autoencoder taken from %s (the checkpoint the training data was prepared with)", source
            )
            return
    raise ValueError(
        f"the training data in {index.data_dir} was encoded with another VQ autoencoder (weights hash {want}, "
        f"from {source or 'unknown'}) than the model being trained ({have}, from {getattr(model, 'checkpoint_id', '?')}). "
        "Pass init= the checkpoint prepare used (model.checkpoint=... at prepare time), or prepare the data with this model."
    )


class DiffusionObjective(nn.Module):
    """eps-prediction MSE of one batch; the module DDP wraps (UNet + summarizer parameters)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.unet = model.unet
        self.summarizer = model.summarizer
        object.__setattr__(self, "_model", model)  # not a submodule: the VQ stays outside DDP

    def context(self, ssl_groups: list, batch: int, device: torch.device) -> torch.Tensor:
        ctx = None
        for m, rows, grids in ssl_groups:
            rows = rows.to(device, non_blocking=True)
            c = self._model.condition(grids.to(device, non_blocking=True), int(m))
            if ctx is None:
                ctx = c.new_zeros((batch, *c.shape[1:]))
            ctx = ctx.index_copy(0, rows, c.to(ctx.dtype))
        return ctx

    def forward(
        self, latent: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, keep: torch.Tensor, ssl_groups: list
    ) -> torch.Tensor:
        ctx = self.context(ssl_groups, latent.shape[0], latent.device)
        ctx = ctx * keep.to(ctx.dtype)[:, None, None]  # context dropout: whole sample -> zeros
        x_t = self._model.q_sample(latent, t, noise)
        eps = self._model.eps(x_t, t, ctx)
        return F.mse_loss(eps.float(), noise.float())


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in list(model.unet.parameters()) + list(model.summarizer.parameters()) if p.requires_grad]


@dataclass
class TrainingParts:
    """What one optimiser step needs: the model, its objective (DDP-wrapped or not), AdamW,
    the GradScaler (fp16 only) and the EMA."""

    model: nn.Module
    objective: nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA
    distributed: bool = False

    def wrap_ddp(self, device: torch.device, find_unused_parameters: bool = True) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.objective = DDP(
            self.objective,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
            broadcast_buffers=False,
        )
        self.distributed = True


def setup_training(model: nn.Module, cfg: TrainConfig, device: torch.device, precision: str) -> TrainingParts:
    """Model on ``device`` in training mode (VQ frozen, optional gradient checkpointing), EMA of
    the UNet, AdamW over UNet + summarizer, GradScaler (enabled for fp16)."""
    model.to(device)
    model.vq.requires_grad_(False).eval()
    model.unet.train()
    model.summarizer.train()
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    ema = EMA(model.unet, cfg.ema_decay, cfg.ema_warmup)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return TrainingParts(model, DiffusionObjective(model), params, optimizer, scaler, ema)


def train_step(
    parts: TrainingParts,
    batches: list[dict[str, Any]],
    lr: float,
    amp=None,
    max_grad_norm: float | None = None,
) -> torch.Tensor:
    """One optimiser step over ``len(batches)`` accumulated micro-batches; returns the mean loss
    (a device tensor: reading it synchronises)."""
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    device = parts.params[0].device
    loss_sum = torch.zeros((), device=device)
    n = len(batches)
    for micro, batch in enumerate(batches):
        sync = parts.distributed and micro < n - 1
        with parts.objective.no_sync() if sync else nullcontext():
            with amp if amp is not None else nullcontext():
                loss = parts.objective(
                    batch["latent"].to(device, non_blocking=True),
                    batch["noise"].to(device, non_blocking=True),
                    batch["t"].to(device, non_blocking=True),
                    batch["keep"].to(device, non_blocking=True),
                    batch["ssl_groups"],
                )
            parts.scaler.scale(loss / n).backward()
        loss_sum += loss.detach() / n
    if max_grad_norm:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.params, max_grad_norm)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.ema.update(parts.model.unet)
    return loss_sum


# ----------------------------------------------------------------------------------------------
# sample grids


def pick_conditions(dataset: MultiScaleDataset, n: int) -> dict[int, dict[str, torch.Tensor]]:
    """``n`` tiles per magnification at evenly spaced positions of the data (fixed for a run)."""
    out = {}
    for m, ix in sorted(dataset.index.mags.items()):
        k = min(n, len(ix))
        rows = np.unique(np.linspace(0, len(ix) - 1, k).round().astype(int))
        tiles = [dataset.reader.read(m, int(i)) for i in rows]
        out[m] = {
            "latent": torch.from_numpy(np.stack([t["latent"] for t in tiles]).astype(np.float32)),
            "ssl": torch.from_numpy(np.stack([t["ssl"] for t in tiles]).astype(np.float32)),
        }
    return out


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid_png(path: Path, rows: list[tuple[str, np.ndarray]], title: str) -> Path:
    """A labelled image grid: one row per (label, uint8 (n, H, W, 3) images)."""
    from PIL import Image, ImageDraw

    n = max(len(r) for _, r in rows)
    h, w = rows[0][1].shape[1:3]
    label_w, head_h, pad = 70, 16, 2
    canvas = Image.new("RGB", (label_w + n * (w + pad), head_h + len(rows) * (h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill=(0, 0, 0))
    for r, (label, imgs) in enumerate(rows):
        y = head_h + r * (h + pad)
        draw.text((4, y + h // 2 - 6), label, fill=(0, 0, 0))
        for c, img in enumerate(imgs):
            canvas.paste(Image.fromarray(img), (label_w + c * (w + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


@torch.no_grad()
def write_sample_grids(
    model: nn.Module,
    conditions: Mapping[int, Mapping[str, torch.Tensor]],
    out_dir: Path,
    cfg: SampleConfig,
    step: int,
    device: torch.device,
    precision: str = "fp32",
) -> list[Path]:
    """Per magnification: the data (VQ decode of stored latents) above the model's samples for
    the same conditions (classifier-free guidance, fixed starting noise). Uses the weights the
    model holds (call inside ``ema.swapped_into``)."""
    paths = []
    was_training = model.unet.training, model.summarizer.training
    model.unet.eval()
    model.summarizer.eval()
    try:
        for m, cond in sorted(conditions.items()):
            latent = cond["latent"].to(device)
            ssl = cond["ssl"].to(device)
            g = torch.Generator().manual_seed(cfg.seed * 1000 + m)
            x_T = torch.randn(latent.shape, generator=g).to(device)
            with autocast_ctx(precision, device):
                ctx = model.condition(ssl, m)
                z = model.sample(
                    ctx.float(), steps=cfg.steps, guidance=cfg.guidance, sampler=cfg.sampler, x_T=x_T
                )
                real = model.decode(latent)
                fake = model.decode(z.float())
            name = f"m{m}_{MAG_NAMES[m]}.png"
            title = f"step {step}  magnification {MAG_NAMES[m]}  ({cfg.sampler} {cfg.steps} steps, guidance {cfg.guidance:g}, EMA weights)"
            paths.append(
                save_grid_png(out_dir / name, [("data", _to_uint8(real)), ("sample", _to_uint8(fake))], title)
            )
    finally:
        model.unet.train(was_training[0])
        model.summarizer.train(was_training[1])
    return paths


# ----------------------------------------------------------------------------------------------
# checkpoint content


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
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


def _extra_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    py = random.getstate()
    return {
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            *[x.item() if hasattr(x, "item") else x for x in np_state[2:]],
        ],
        "python": [py[0], list(py[1]), py[2]],
    }


def save_training_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: dict[str, Any],
    keep: int | None = None,
    samples: tuple | None = None,
) -> Path:
    """Write one checkpoint atomically (see :mod:`zoomfeat.training.checkpoint`)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        live = {k: v.detach().cpu().contiguous() for k, v in model.unet.state_dict().items()}
        with ema.swapped_into(model.unet):
            model.save_pretrained(tmp)
            if samples is not None:
                conditions, sample_cfg, device, precision = samples
                write_sample_grids(model, conditions, tmp / "samples", sample_cfg, step, device, precision)
        tdir = tmp / "trainer"
        tdir.mkdir(exist_ok=True)
        save_file(live, str(tdir / "unet_live.safetensors"))
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()},
            str(tdir / "unet_ema.safetensors"),
        )
        torch.save(optimizer.state_dict(), tdir / "optimizer.pt")
        if scaler is not None and scaler.is_enabled():
            torch.save(scaler.state_dict(), tdir / "grad_scaler.pt")
        torch.save(_rng_state(), tdir / "rng.pt")
        full = {
            **state,
            "rng": _extra_rng(),
            "ema": {"decay": ema.decay, "warmup": ema.warmup, "num_updates": ema.num_updates},
        }
        text = json.dumps(full, indent=1, sort_keys=True, default=str)
        with open(tdir / ".state.json.tmp", "w") as f:
            f.write(text)
        os.replace(tdir / ".state.json.tmp", tdir / "state.json")  # last: marks the checkpoint complete

    return ckpt_io.write_checkpoint(root, step, write, keep=keep)


def load_training_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Model (EMA weights in the UNet) and training state of a checkpoint, weights-only."""
    from safetensors.torch import load_file

    ZoomLDM = _model_class()
    state = ckpt_io.read_state(path)
    model = ZoomLDM.from_pretrained(str(path))
    tdir = path / "trainer"
    out = {
        "model": model,
        "state": state,
        "unet_live": load_file(str(tdir / "unet_live.safetensors")),
        "unet_ema": load_file(str(tdir / "unet_ema.safetensors")),
        "optimizer": torch.load(tdir / "optimizer.pt", map_location=device, weights_only=True),
        "rng": torch.load(tdir / "rng.pt", map_location="cpu", weights_only=True),
    }
    if (tdir / "grad_scaler.pt").is_file():
        out["grad_scaler"] = torch.load(tdir / "grad_scaler.pt", map_location="cpu", weights_only=True)
    return out


# ----------------------------------------------------------------------------------------------
# the loop


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up from lr/warmup to lr over ``warmup_steps`` steps, then constant."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


def _resume_source(cfg: TrainConfig, root: Path) -> Path | None:
    r = cfg.resume
    if r in (False, None, "false", "False", "no", "never"):
        if ckpt_io.list_checkpoints(root):
            raise FileExistsError(
                f"{cfg.out_dir} already holds training checkpoints and resume=false; use resume=auto to continue, or another out_dir"
            )
        return None
    if r in (True, "auto", "true", "True", "latest"):
        return ckpt_io.find_latest(root)
    return ckpt_io.resolve_checkpoint(r)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or continue training) and return a summary: final step, loss, checkpoint path."""
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        import torch.distributed as dist

        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    from tqdm.auto import tqdm

    device = info.device
    precision = resolve_precision(cfg.precision, device)
    out_dir = Path(cfg.out_dir)
    root = ckpt_io.checkpoint_root(out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        removed = ckpt_io.clean_partial(root)
        if removed:
            log.warning(
                "removed partial checkpoint(s) from an interrupted run: %s", [p.name for p in removed]
            )
    _barrier(info)

    index = ShardIndex.load(cfg.data_dir, cfg.mags)
    source = _resume_source(cfg, root)
    resumed = None
    if source is not None:
        resumed = load_training_checkpoint(source, device)
        model = resumed["model"]
        start_step = int(resumed["state"]["step"])
        if info.is_main:
            log.info("resuming from %s (step %d)", source, start_step)
    else:
        model = build_model(cfg)
        start_step = 0
    ssl_channels = int(model.ssl_channels)
    if ssl_channels != index.ssl_channels:
        raise ValueError(
            f"training data {cfg.data_dir} holds UNI grids of width {index.ssl_channels} (encoder {index.info.get('encoder')!r}) "
            f"but model={_label(cfg.model)} expects {ssl_channels}; prepare the data with the matching encoder"
        )

    if resumed is None:
        align_vq(model, index, cfg)
    parts = setup_training(model, cfg, device, precision)
    ema, optimizer, scaler = parts.ema, parts.optimizer, parts.scaler
    global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
    if resumed is not None:
        st = resumed["state"]
        ema.load_state_dict({k: v.to(device) for k, v in resumed["unet_ema"].items()})
        ema.num_updates = int(st["ema"]["num_updates"])
        model.unet.load_state_dict({k: v.to(device) for k, v in resumed["unet_live"].items()})
        optimizer.load_state_dict(resumed["optimizer"])
        if "grad_scaler" in resumed and scaler.is_enabled():
            scaler.load_state_dict(resumed["grad_scaler"])
        _set_rng_state(resumed["rng"], st.get("rng", {}))
        if st.get("global_batch") != global_batch:
            warnings.warn(
                f"resuming with global batch {global_batch} (checkpoint used {st.get('global_batch')}): the data stream "
                "differs from the original run's from here on",
                stacklevel=2,
            )
        if st.get("data") != index.fingerprint():
            warnings.warn(
                f"training data changed since the checkpoint ({st.get('data')} -> {index.fingerprint()})",
                stacklevel=2,
            )
        del resumed
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)

    if info.distributed:
        parts.wrap_ddp(device, cfg.ddp_find_unused_parameters)
    p_uncond = (
        cfg.p_uncond
        if cfg.p_uncond is not None
        else float(model.config.get("summarizer", {}).get("p_uncond", 0.1))
    )
    dataset = MultiScaleDataset(
        index,
        seed=cfg.seed,
        mag_weights=cfg.mag_weights,
        p_uncond=p_uncond,
        num_timesteps=_num_timesteps(model),
    )
    sampler = StepBatchSampler(
        cfg.batch_size, cfg.steps, start_step, info.world_size, info.rank, cfg.grad_accum, cfg.overfit_batch
    )
    loader = make_loader(dataset, sampler, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    conditions = pick_conditions(dataset, cfg.samples.n) if info.is_main and cfg.samples.enabled else None

    run_state = {
        "format": TRAINER_FORMAT,
        "config": _plain(asdict(cfg)),
        "global_batch": global_batch,
        "world_size": info.world_size,
        "precision": precision,
        "p_uncond": p_uncond,
        "data": index.fingerprint(),
        "init": cfg.init,
        "model_name": cfg.model,
    }
    log_path = out_dir / "train_log.jsonl"
    summary: dict[str, Any] = {
        "start_step": start_step,
        "step": start_step,
        "loss": None,
        "checkpoint": str(source) if source else None,
    }
    if start_step >= cfg.steps:
        if info.is_main:
            log.info("nothing to do: checkpoint step %d >= steps=%d", start_step, cfg.steps)
        return summary

    def checkpoint(step: int, loss: float | None) -> Path | None:
        path = None
        if info.is_main:
            state = {
                **run_state,
                "step": step,
                "samples_seen": step * global_batch,
                "loss": loss,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            samples = (conditions, cfg.samples, device, precision) if conditions else None
            path = save_training_checkpoint(
                root, step, model, ema, optimizer, scaler, state, keep=cfg.keep_checkpoints, samples=samples
            )
            log.info("checkpoint %s", path)
        _barrier(info)
        return path

    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        disable=not (cfg.progress and info.is_main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    amp = autocast_ctx(precision, device)
    t0, s0 = time.perf_counter(), start_step
    running, last_loss = None, None
    it = iter(loader)
    try:
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg.lr, cfg.warmup_steps)
            loss_sum = train_step(
                parts, [next(it) for _ in range(cfg.grad_accum)], lr, amp, cfg.max_grad_norm
            )
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps or done % cfg.checkpoint_every == 0:
                if info.distributed:
                    import torch.distributed as dist

                    dist.all_reduce(loss_sum)
                    loss_sum /= info.world_size
                last_loss = float(loss_sum)
                if not math.isfinite(last_loss) and precision != "fp16":
                    raise FloatingPointError(
                        f"training loss is {last_loss} at step {done}; lower lr or use precision=fp32"
                    )
                running = last_loss if running is None else 0.9 * running + 0.1 * last_loss
                elapsed = time.perf_counter() - t0
                sps = (done - s0) * global_batch / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{running:.4f}", samples_s=f"{sps:.1f}", lr=f"{lr:.2e}")
                if info.is_main:
                    rec = {
                        "step": done,
                        "loss": last_loss,
                        "loss_smooth": running,
                        "lr": lr,
                        "samples_per_s": sps,
                        "samples_seen": done * global_batch,
                        "elapsed_s": elapsed,
                    }
                    with open(log_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                summary["checkpoint"] = str(checkpoint(done, last_loss))
            summary.update(step=done, loss=last_loss)
    finally:
        bar.close()
        del it
    elapsed = time.perf_counter() - t0
    summary["samples_per_s"] = (summary["step"] - s0) * global_batch / max(elapsed, 1e-9)
    summary["global_batch"] = global_batch
    return summary


def _num_timesteps(model: nn.Module) -> int:
    for attr in ("num_timesteps", "timesteps"):
        v = getattr(model, attr, None)
        if isinstance(v, int):
            return v
    sched = getattr(model, "schedule", None)
    for attr in ("num_timesteps", "timesteps"):
        v = getattr(sched, attr, None)
        if isinstance(v, int):
            return v
    return 1000


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
