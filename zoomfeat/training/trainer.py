"""The ZoomLDM trainer: UNet + summarizer on prepared multi-scale shards, VQ frozen.

What is optimised is in :mod:`zoomfeat.training.objective` (eps-MSE, AdamW with linear warm-up,
EMA 0.9999 of the UNet with the official LitEma warm-up, gradient accumulation, optional gradient
checkpointing, bf16/fp16 autocast on GPU with a GradScaler for fp16). Magnifications are drawn
uniformly per sample (``mag_weights`` to change that); see docs/ARCHITECTURE.md, "Training".

Multi-GPU: run under ``torchrun`` (DDP; gloo on CPU, nccl on CUDA; :mod:`zoomfeat.runtime.distributed`). Each rank
draws a distinct slice of every step's global batch; only rank 0 writes. Every random choice of a
sample is a function of (seed, sample number) -- see :mod:`zoomfeat.training.dataset` -- so a
resumed run continues the uninterrupted one exactly (same machine, same ``threads``) and the
result does not depend on how the global batch is split over ranks and accumulation steps
(up to float32 summation order).

:class:`Trainer` runs in numbered steps: 1. output directory, 2. data, 3. model (new or
resumed), 4. optimiser/EMA (restored or seeded), 5. data stream, 6. the loop (step, log,
checkpoint), 7. summary. Checkpoints (:mod:`zoomfeat.runtime.checkpoints`, :mod:`.state`; the
EMA, checkpoint and DDP machinery lives in ``runtime/``, shared with the CDM trainer) are ZoomLDM pretrained
directories holding the EMA UNet, with the training state in ``trainer/`` beside it.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zoomfeat.runtime import checkpoints as ckpt_io
from zoomfeat.runtime import stopping
from zoomfeat.runtime.atomic import ensure_dir
from zoomfeat.runtime.device import autocast, resolve_precision
from zoomfeat.runtime.distributed import (
    DistInfo,
    apply_threads,
    barrier,
    init_distributed,
    mean_over_ranks,
    shutdown,
)
from zoomfeat.runtime.errors import ShardError
from zoomfeat.runtime.seeding import seed_everything
from zoomfeat.training.config import TrainConfig
from zoomfeat.training.dataset import MultiScaleDataset, StepBatchSampler, make_loader
from zoomfeat.training.model_init import align_vq, build_model
from zoomfeat.training.objective import TrainingParts, lr_at, setup_training, train_step
from zoomfeat.training.samples import pick_conditions
from zoomfeat.training.shards import ShardIndex
from zoomfeat.training.state import (
    TRAINER_FORMAT,
    load_training_checkpoint,
    save_training_checkpoint,
    set_rng_state,
)

if TYPE_CHECKING:
    from zoomfeat.model.zoomldm import ZoomLDM


log = logging.getLogger("zoomfeat.train")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or continue training) and return a summary: final step, loss, checkpoint path."""
    apply_threads(cfg.threads)
    info = init_distributed(cfg.device)
    try:
        return Trainer(cfg, info).run()
    finally:
        shutdown(info)


def _num_timesteps(model: ZoomLDM) -> int:
    for owner in (model, getattr(model, "schedule", None)):
        for attr in ("num_timesteps", "timesteps"):
            v = getattr(owner, attr, None)
            if isinstance(v, int):
                return v
    return 1000


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class Trainer:
    """One training run in named steps (see the module docstring); :meth:`run` calls them in order."""

    def __init__(self, cfg: TrainConfig, info: DistInfo) -> None:
        self.cfg = cfg
        self.info = info
        self.device = info.device
        self.precision = resolve_precision(cfg.precision, self.device, training=True)
        self.out_dir = Path(cfg.out_dir)
        self.root = ckpt_io.checkpoint_root(self.out_dir)
        self.global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
        self.source: Path | None = None  # the checkpoint resumed from
        self.start_step = 0
        self.step = 0
        self.loss: float | None = None
        self.smooth_loss: float | None = None
        self.last_checkpoint: Path | None = None

    def run(self) -> dict[str, Any]:
        self.prepare_output()  # 1
        self.load_data()  # 2
        resumed = self.load_model()  # 3
        self.setup_optimisation(resumed)  # 4
        del resumed
        self.build_stream()  # 5
        if self.start_step >= self.cfg.steps:
            if self.info.is_main:
                log.info("nothing to do: checkpoint step %d >= steps=%d", self.start_step, self.cfg.steps)
            return self.summary(elapsed=None)
        t0 = time.perf_counter()
        self.loop(t0)  # 6
        return self.summary(elapsed=time.perf_counter() - t0)  # 7

    # -- 1. output directory ------------------------------------------------------------------

    def prepare_output(self) -> None:
        """Create ``out_dir`` and remove partial checkpoints of a killed run (rank 0)."""
        if self.info.is_main:
            ensure_dir(self.out_dir, "training output directory")
            removed = ckpt_io.clean_partial(self.root)
            if removed:
                log.warning(
                    "removed partial checkpoint(s) from an interrupted run: %s", [p.name for p in removed]
                )
        barrier(self.info)

    # -- 2. data --------------------------------------------------------------------------------

    def load_data(self) -> None:
        """Index the prepared shards (clear errors for a missing, empty or damaged directory)."""
        self.index = ShardIndex.load(self.cfg.require_data(), self.cfg.mags)

    # -- 3. model -------------------------------------------------------------------------------

    def _resume_source(self) -> Path | None:
        return ckpt_io.resume_source(self.cfg.out_dir, self.cfg.resume)

    def load_model(self) -> dict[str, Any] | None:
        """The model: from the checkpoint to resume (returned, for step 4), else new (init or random)."""
        self.source = self._resume_source()
        resumed = None
        if self.source is not None:
            resumed = load_training_checkpoint(self.source, self.device)
            self.model = resumed["model"]
            self.start_step = int(resumed["state"]["step"])
            if self.info.is_main:
                log.info("resuming from %s (step %d)", self.source, self.start_step)
        else:
            self.model = build_model(self.cfg.model, self.cfg.init_source, self.cfg.seed)
        self.step = self.start_step
        width = int(self.model.ssl_channels)
        if width != self.index.ssl_channels:
            raise ShardError(
                f"training data {self.cfg.data} holds UNI grids of width {self.index.ssl_channels} "
                f"(encoder {self.index.info.get('encoder')!r}) but model={self.cfg.model.name} expects {width}; "
                "prepare the data with the matching encoder"
            )
        if resumed is None:
            align_vq(self.model, self.index, self.cfg.model, self.cfg.init_source)
        return resumed

    # -- 4. optimiser, EMA, RNG ---------------------------------------------------------------

    def setup_optimisation(self, resumed: dict[str, Any] | None) -> None:
        """AdamW, EMA and GradScaler, restored from the checkpoint or new (global RNGs seeded)."""
        self.parts: TrainingParts = setup_training(self.model, self.cfg, self.device, self.precision)
        if resumed is not None:
            self._restore(resumed)
        else:
            seed_everything(self.cfg.seed)
        if self.info.distributed:
            self.parts.wrap_ddp(self.info, self.cfg.ddp_find_unused_parameters)

    def _restore(self, resumed: dict[str, Any]) -> None:
        st, parts = resumed["state"], self.parts
        parts.ema.load_state_dict({k: v.to(self.device) for k, v in resumed["unet_ema"].items()})
        parts.ema.num_updates = int(st["ema"]["num_updates"])
        self.model.unet.load_state_dict({k: v.to(self.device) for k, v in resumed["unet_live"].items()})
        parts.optimizer.load_state_dict(resumed["optimizer"])
        if "grad_scaler" in resumed and parts.scaler.is_enabled():
            parts.scaler.load_state_dict(resumed["grad_scaler"])
        set_rng_state(resumed["rng"], st.get("rng", {}))
        if st.get("global_batch") != self.global_batch:
            warnings.warn(
                f"resuming with global batch {self.global_batch} (checkpoint used {st.get('global_batch')}): "
                "the data stream differs from the original run's from here on",
                stacklevel=3,
            )
        if st.get("data") != self.index.fingerprint():
            warnings.warn(
                f"training data changed since the checkpoint ({st.get('data')} -> {self.index.fingerprint()})",
                stacklevel=3,
            )

    # -- 5. data stream -----------------------------------------------------------------------

    def build_stream(self) -> None:
        """This rank's batches of steps ``start_step .. steps-1``, sample-grid conditions, run facts."""
        cfg, info = self.cfg, self.info
        self.p_uncond = (
            cfg.p_uncond
            if cfg.p_uncond is not None
            else float(self.model.config.get("summarizer", {}).get("p_uncond", 0.1))
        )
        self.dataset = MultiScaleDataset(
            self.index,
            seed=cfg.seed,
            mag_weights=cfg.mag_weights,
            p_uncond=self.p_uncond,
            num_timesteps=_num_timesteps(self.model),
        )
        sampler = StepBatchSampler(
            cfg.batch_size,
            cfg.steps,
            start_step=self.start_step,
            world_size=info.world_size,
            rank=info.rank,
            grad_accum=cfg.grad_accum,
            repeat_first_step=cfg.overfit_batch,
        )
        self.loader = make_loader(
            self.dataset, sampler, num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda"
        )
        self.conditions = (
            pick_conditions(self.dataset, cfg.samples.n) if info.is_main and cfg.samples.enabled else None
        )
        self.run_state = {
            "format": TRAINER_FORMAT,
            "config": _plain(asdict(cfg)),
            "global_batch": self.global_batch,
            "world_size": info.world_size,
            "precision": self.precision,
            "p_uncond": self.p_uncond,
            "data": self.index.fingerprint(),
            "init": cfg.init_source,
            "model_name": cfg.model.name,
        }

    # -- 6. the loop ----------------------------------------------------------------------------

    def loop(self, t0: float) -> None:
        """6a. one optimiser step, 6b. log every ``log_every``, 6c. checkpoint every ``checkpoint_every``."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(
            total=cfg.steps,
            initial=self.start_step,
            disable=not (cfg.progress and self.info.is_main),
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        amp = autocast(self.device, self.precision)
        batches = iter(self.loader)
        try:
            for step in range(self.start_step, cfg.steps):
                lr = lr_at(step, cfg.lr, cfg.warmup_steps)
                loss_sum = train_step(
                    self.parts,
                    [next(batches) for _ in range(cfg.grad_accum)],
                    lr=lr,
                    amp=amp,
                    max_grad_norm=cfg.max_grad_norm,
                )
                self.step = done = step + 1
                bar.update(1)
                if done % cfg.log_every == 0 or done == cfg.steps or done % cfg.checkpoint_every == 0:
                    self.log_step(loss_sum, lr, time.perf_counter() - t0, bar)
                if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                    self.checkpoint()
                if done < cfg.steps and self.stop_signal() is not None:
                    self.stop(done)
        finally:
            bar.close()
            del batches

    def stop_signal(self) -> int | None:
        """6d. The stop signal received (:mod:`zoomfeat.runtime.stopping`), agreed over ranks (any
        rank's counts: every rank stops after the same step, or the collectives would hang)."""
        signum = stopping.requested()
        if not self.info.distributed:
            return signum
        flag = torch.tensor([float(signum or 0)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

    def stop(self, done: int) -> None:
        """6e. Stop after step ``done`` on a signal: a checkpoint of it (unless just written;
        no sample grids: SLURM allows ``KillWait`` seconds), then :class:`StopRequested`."""
        signum = self.stop_signal() or 15
        if self.last_checkpoint is None or self.last_checkpoint.name != ckpt_io.step_dir_name(done):
            self.checkpoint(samples=False)
        raise stopping.StopRequested(
            signum,
            f"stopped after step {done} of {self.cfg.steps}, checkpoint {self.last_checkpoint or self.root} "
            f"written; rerun the same command to resume from it (out_dir={self.out_dir}, resume=auto)",
        )

    def log_step(self, loss_sum: torch.Tensor, lr: float, elapsed: float, bar) -> None:
        """6b. Mean loss over ranks (synchronises), progress bar, one ``train_log.jsonl`` line (rank 0)."""
        done = self.step
        self.loss = float(mean_over_ranks(loss_sum, self.info))
        if not math.isfinite(self.loss) and self.precision != "fp16":
            raise FloatingPointError(
                f"training loss is {self.loss} at step {done}; lower lr or use precision=fp32"
            )
        self.smooth_loss = self.loss if self.smooth_loss is None else 0.9 * self.smooth_loss + 0.1 * self.loss
        sps = (done - self.start_step) * self.global_batch / max(elapsed, 1e-9)
        bar.set_postfix(loss=f"{self.smooth_loss:.4f}", samples_s=f"{sps:.1f}", lr=f"{lr:.2e}")
        if self.info.is_main:
            rec = {
                "step": done,
                "loss": self.loss,
                "loss_smooth": self.smooth_loss,
                "lr": lr,
                "samples_per_s": sps,
                "samples_seen": done * self.global_batch,
                "elapsed_s": elapsed,
            }
            with open(self.out_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def checkpoint(self, samples: bool = True) -> None:
        """6c. Write a checkpoint (rank 0; with sample grids unless ``samples`` is false) and wait for every rank."""
        if self.info.is_main:
            state = {
                **self.run_state,
                "step": self.step,
                "samples_seen": self.step * self.global_batch,
                "loss": self.loss,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            grids = (
                (self.conditions, self.cfg.samples, self.device, self.precision)
                if self.conditions and samples
                else None
            )
            p = self.parts
            self.last_checkpoint = save_training_checkpoint(
                self.root,
                self.step,
                model=self.model,
                ema=p.ema,
                optimizer=p.optimizer,
                scaler=p.scaler,
                state=state,
                keep=self.cfg.keep_checkpoints,
                samples=grids,
            )
            log.info("checkpoint %s", self.last_checkpoint)
        barrier(self.info)

    # -- 7. summary -----------------------------------------------------------------------------

    def summary(self, elapsed: float | None) -> dict[str, Any]:
        """Final step, last logged loss, the newest checkpoint, throughput and global batch."""
        ckpt = self.last_checkpoint or self.source
        out: dict[str, Any] = {
            "start_step": self.start_step,
            "step": self.step,
            "loss": self.loss,
            "checkpoint": str(ckpt) if ckpt else None,
        }
        if elapsed is not None:
            out["samples_per_s"] = (self.step - self.start_step) * self.global_batch / max(elapsed, 1e-9)
            out["global_batch"] = self.global_batch
        return out
