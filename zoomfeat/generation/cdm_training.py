"""Sampling contexts with the CDM, and training it on ``prepare``'s shards with the trainers' machinery.

The maths is in :mod:`zoomfeat.generation.cdm` ("Training") and docs/generation.md, "CDM"; golden G7.

**The training stream**: :mod:`zoomfeat.generation.cdm_data` (sample number ``n`` -> its draws,
keyed by (seed, n)); step ``s`` with global batch ``G`` uses numbers ``s*G .. s*G+G-1``, rank
``r`` of ``W`` takes ``s*G + r*G/W + [0, G/W)``. Hence a resumed run continues the uninterrupted
one exactly (no data-order state), and ``W`` ranks train what one process does with the same
global batch (up to float32 summation order).

**One step**: ``loss = mean_b (mse_b + vb_b)`` over the rank's samples
(:meth:`CDMDiffusion.training_losses`); DDP all-reduces the gradients to their mean over ranks,
i.e. the gradient of the mean over the global batch; AdamW (lr 1e-4, weight decay 0, constant);
then the EMA of the whole DiT with a constant decay (0.9999, no warm-up: the official
``update_ema``), :class:`zoomfeat.runtime.ema.EMA`.

**Checkpoints, resume, DDP**: the ZoomLDM trainer's (``runtime.checkpoints``,
``runtime.train_state``, ``runtime.distributed``)::

    out_dir/checkpoints/step-XXXXXXXX/cdm_ema.safetensors     EMA DiT (what ``cdm.checkpoint`` loads)
    out_dir/checkpoints/step-XXXXXXXX/trainer/                model_live, model_ema (shadows),
                                                              optimizer.pt, rng.pt, state.json (last)
    out_dir/checkpoints/latest -> step-XXXXXXXX
    out_dir/train_log.jsonl                                   one line per logged step (rank 0)

``resume`` auto continues from ``latest`` (partial directories of a killed run are removed
first), false refuses an ``out_dir`` holding checkpoints. Only rank 0 writes.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zoomfeat.generation.cdm import DiT
from zoomfeat.generation.cdm_data import CDMData, CDMStream
from zoomfeat.generation.cdm_diffusion import CDMDiffusion
from zoomfeat.generation.costs import Tracker
from zoomfeat.model.callbacks import StepCallback
from zoomfeat.runtime import checkpoints as ckpt_io
from zoomfeat.runtime.atomic import ensure_dir
from zoomfeat.runtime.distributed import DistInfo, barrier, mean_over_ranks, wrap_ddp
from zoomfeat.runtime.ema import EMA
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.train_state import (
    TRAINER_DIR,
    cpu_tensors,
    read_trainer_dir,
    restore_optimisation,
    write_trainer_dir,
)
from zoomfeat.runtime.units import MagIndex

if TYPE_CHECKING:
    from zoomfeat.generation.config import GenerateConfig
    from zoomfeat.model.zoomldm import ZoomLDM

#: the EMA DiT in a checkpoint directory (a bare state_dict: ``cdm.checkpoint`` loads it)
EMA_FILE = "cdm_ema.safetensors"
CDM_TRAINER_FORMAT = 1


def sample_contexts(
    cdm: DiT,
    *,
    mag: MagIndex,
    n: int,
    respacing: int = 200,
    generator: torch.Generator | None = None,
    z: torch.Tensor | None = None,
    tracker: Tracker | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """``n`` CDM samples at magnification index ``mag``, as UNet contexts.

    docs/generation.md, "CDM": DDIM with ``respacing`` steps from z (:meth:`CDMDiffusion.ddim_sample`),
    y = ``mag``; the sample x0 [n, C, 65] is the summarizer output, transposed to [n, 65, C].

    Args:
        z: the starting noise [n, C, 65] (drawn from ``generator`` when None).
        callback: observes every DDIM step (stage ``"cdm"``).

    Returns:
        [n, 65, C] contexts.
    """
    if not 0 <= int(mag) < cdm.num_classes:
        raise ConfigError(f"CDM magnification index {mag} out of range 0..{cdm.num_classes - 1}")
    dev = next(cdm.parameters()).device
    if z is None:
        g_dev = generator.device if generator is not None else dev
        z = torch.randn((n, cdm.in_channels, cdm.num_tokens), generator=generator, device=g_dev)
    z = z.to(dev).float()
    y = torch.full((z.shape[0],), int(mag), dtype=torch.long, device=dev)
    x = CDMDiffusion(respacing=respacing).ddim_sample(cdm, z, y=y, tracker=tracker, callback=callback)
    return x.transpose(1, 2).contiguous()


@dataclass
class CDMTrainOptions:
    """The official recipe (docs/generation.md, "CDM") with the sizes of a run.

    ``batch_size`` is the global batch (the official 256), split evenly over DDP ranks.
    ``resume``: auto (continue from ``out_dir/checkpoints/latest``), false (refuse an ``out_dir``
    with checkpoints) or a checkpoint path.
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    seed: int = 0
    grad_checkpointing: bool = False
    log_every: int = 100
    checkpoint_every: int = 5000
    keep_checkpoints: int | None = 3
    resume: Any = "auto"


class CDMTrainer:
    """One CDM training run: 1. output dir, 2. resume or start, 3. the loop (step, log,
    checkpoint), 4. summary. ``run_facts`` (JSON-able) go into every ``state.json``."""

    def __init__(
        self,
        cdm: DiT,
        stream: CDMStream,
        *,
        opts: CDMTrainOptions,
        out_dir: str | Path,
        info: DistInfo | None = None,
        run_facts: Mapping[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cdm, self.stream, self.opts = cdm, stream, opts
        self.info = info or DistInfo(device=next(cdm.parameters()).device)
        self.out_dir = Path(out_dir)
        self.root = ckpt_io.checkpoint_root(self.out_dir)
        self.run_facts = {"model": "DiT", "in_channels": cdm.in_channels, **(run_facts or {})}
        self.log = log
        if opts.batch_size % self.info.world_size:
            raise ConfigError(
                f"cdm_train.batch_size={opts.batch_size} (the global batch) must be a multiple of "
                f"the {self.info.world_size} processes"
            )
        self.local_batch = opts.batch_size // self.info.world_size
        self.diffusion = CDMDiffusion()
        self.start_step = self.step = 0
        self.loss: float | None = None
        self.source: Path | None = None
        self.last_checkpoint: Path | None = None

    def run(self) -> dict[str, Any]:
        """Steps 1-4; returns :meth:`summary`."""
        self.prepare_output()  # 1
        self.setup()  # 2
        if self.step < self.opts.steps:
            self.loop()  # 3
        self.cdm.eval()
        return self.summary()  # 4

    # -- 1. output directory ------------------------------------------------------------------

    def prepare_output(self) -> None:
        """Create ``out_dir`` and remove partial checkpoints of a killed run (rank 0)."""
        if self.info.is_main:
            ensure_dir(self.out_dir, "CDM training output directory")
            ckpt_io.clean_partial(self.root)
        barrier(self.info)

    # -- 2. model, optimiser, EMA: resumed or new -----------------------------------------------

    def setup(self) -> None:
        """AdamW and the EMA of the DiT, restored from the checkpoint to resume when there is one."""
        cdm, opts = self.cdm.to(self.info.device), self.opts
        self.source = ckpt_io.resume_source(self.out_dir, opts.resume)
        self.ema = EMA(cdm, opts.ema_decay, warmup=False)
        params = [p for p in cdm.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
        if self.source is not None:
            self._check_resumable(ckpt_io.read_state(self.source))  # before reading any weights
            resumed = read_trainer_dir(
                self.source / TRAINER_DIR, ("model_live", "model_ema"), self.info.device
            )
            cdm.load_state_dict({k: v.to(self.info.device) for k, v in resumed["model_live"].items()})
            restore_optimisation(resumed, ema=self.ema, ema_key="model_ema", optimizer=self.optimizer)
            self.start_step = self.step = int(resumed["state"]["step"])
        cdm.grad_checkpointing = opts.grad_checkpointing
        cdm.train()
        self.module = wrap_ddp(cdm, self.info)

    def _check_resumable(self, st: Mapping[str, Any]) -> None:
        """One-line errors for a checkpoint of another model; warnings for another batch or data."""
        if not str(st.get("model", "")).startswith("DiT"):
            raise ConfigError(
                f"{self.source} is not a CDM training checkpoint (no DiT in its state.json); "
                "use another out_dir or cdm_train.resume=false"
            )
        for key in ("model", "in_channels"):
            if key in self.run_facts and st.get(key) != self.run_facts[key]:
                raise ConfigError(
                    f"{self.source} holds a CDM with {key}={st.get(key)!r}, this run builds "
                    f"{key}={self.run_facts[key]!r}; use the same cdm.variant and model, or another out_dir"
                )
        if st.get("global_batch") != self.opts.batch_size:
            warnings.warn(
                f"resuming with global batch {self.opts.batch_size} (checkpoint used {st.get('global_batch')}): "
                "the data stream differs from the original run's from here on",
                stacklevel=3,
            )
        if "data" in self.run_facts and st.get("data") != self.run_facts["data"]:
            warnings.warn(
                f"training data changed since the checkpoint ({st.get('data')} -> {self.run_facts['data']})",
                stacklevel=3,
            )

    # -- 3. the loop ----------------------------------------------------------------------------

    def numbers(self, step: int) -> list[int]:
        """This rank's sample numbers of ``step`` (module docstring)."""
        base = step * self.opts.batch_size + self.info.rank * self.local_batch
        return list(range(base, base + self.local_batch))

    def train_step(self, step: int) -> torch.Tensor:
        """One optimiser step; returns this rank's mean loss (a 0-d device tensor)."""
        dev = self.info.device
        x0, y, t, noise = (v.to(dev) for v in self.stream.batch(self.numbers(step)))
        loss = self.diffusion.training_losses(self.module, x0, t=t, y=y, noise=noise)["loss"].mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.cdm)
        return loss.detach()

    def loop(self) -> None:
        """3a. step, 3b. log every ``log_every``, 3c. checkpoint every ``checkpoint_every`` and at the end."""
        opts, t0 = self.opts, time.perf_counter()
        for step in range(self.start_step, opts.steps):
            loss = self.train_step(step)
            self.step = done = step + 1
            if done % opts.log_every == 0 or done == opts.steps or done % opts.checkpoint_every == 0:
                self.log_step(loss, time.perf_counter() - t0)
            if done % opts.checkpoint_every == 0 or done == opts.steps:
                self.checkpoint()
            if done < opts.steps and self.stop_signal() is not None:
                self.stop(done)

    def stop_signal(self) -> int | None:
        """3d. The stop signal received (SIGTERM/SIGINT/SIGUSR1, :mod:`zoomfeat.runtime.stopping`),
        agreed over ranks (all stop after the same step, or the collectives would hang)."""
        from zoomfeat.runtime import stopping

        signum = stopping.requested()
        if not self.info.distributed:
            return signum
        flag = torch.tensor([float(signum or 0)], device=self.info.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

    def stop(self, done: int) -> None:
        """3e. Stop after step ``done`` on a signal: a checkpoint of it (unless just written), then
        :class:`~zoomfeat.runtime.stopping.StopRequested` (one line, exit 128 + signal)."""
        from zoomfeat.runtime import stopping

        signum = self.stop_signal() or 15
        if self.last_checkpoint is None or self.last_checkpoint.name != ckpt_io.step_dir_name(done):
            self.checkpoint()
        raise stopping.StopRequested(
            signum,
            f"stopped after step {done} of {self.opts.steps}, checkpoint {self.last_checkpoint or self.root} "
            f"written; rerun the same command to resume from it (out_dir={self.out_dir}, cdm_train.resume=auto)",
        )

    def log_step(self, loss: torch.Tensor, elapsed: float) -> None:
        """3b. Mean loss over ranks (every rank calls it), one ``train_log.jsonl`` line (rank 0)."""
        self.loss = float(mean_over_ranks(loss.clone(), self.info))
        if not self.info.is_main:
            return
        rec = {
            "step": self.step,
            "loss": self.loss,
            "samples_seen": self.step * self.opts.batch_size,
            "samples_per_s": (self.step - self.start_step) * self.opts.batch_size / max(elapsed, 1e-9),
        }
        with open(self.out_dir / "train_log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.log is not None:
            self.log(f"step {self.step}/{self.opts.steps} loss {self.loss:.4f}")

    def checkpoint(self) -> None:
        """3c. Write ``checkpoints/step-N`` (rank 0; layout in the module docstring); every rank waits."""
        if self.info.is_main:
            state = {
                **self.run_facts,
                "format": CDM_TRAINER_FORMAT,
                "step": self.step,
                "global_batch": self.opts.batch_size,
                "world_size": self.info.world_size,
                "samples_seen": self.step * self.opts.batch_size,
                "loss": self.loss,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }

            def write(tmp: Path) -> None:
                from safetensors.torch import save_file

                live = cpu_tensors(self.cdm.state_dict())
                with self.ema.swapped_into(self.cdm):
                    save_file(cpu_tensors(self.cdm.state_dict()), str(tmp / EMA_FILE))
                weights = {"model_live": live, "model_ema": self.ema.state_dict()}
                write_trainer_dir(
                    tmp / TRAINER_DIR,
                    weights,
                    optimizer=self.optimizer,
                    scaler=None,
                    ema=self.ema,
                    state=state,
                )

            self.last_checkpoint = ckpt_io.write_checkpoint(
                self.root, self.step, write, keep=self.opts.keep_checkpoints
            )
        barrier(self.info)

    # -- 4. summary -----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Steps, last logged loss, the newest checkpoint and its EMA weights file."""
        ckpt = self.last_checkpoint or self.source
        return {
            "start_step": self.start_step,
            "step": self.step,
            "loss": self.loss,
            "global_batch": self.opts.batch_size,
            "world_size": self.info.world_size,
            "checkpoint": str(ckpt) if ckpt else None,
            "ema": str(ckpt / EMA_FILE) if ckpt else None,
        }


def cdm_weights_file(path: str | Path) -> Path:
    """The weights file ``cdm.checkpoint`` names: a file as it is; a CDM run directory, its
    ``checkpoints`` directory, ``latest`` or a step directory -> that checkpoint's EMA DiT."""
    p = Path(path)
    if not p.is_dir():
        return p
    return ckpt_io.resolve_checkpoint(p) / EMA_FILE


def train_cdm(
    cdm: DiT,
    stream: CDMStream,
    *,
    opts: CDMTrainOptions,
    out_dir: str | Path,
    info: DistInfo | None = None,
    run_facts: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue training) ``cdm`` on ``stream`` into ``out_dir``; returns the summary.

    See :class:`CDMTrainer`; ``info`` is this process's DDP place (None: one process on the
    DiT's device).
    """
    return CDMTrainer(cdm, stream, opts=opts, out_dir=out_dir, info=info, run_facts=run_facts, log=log).run()


def train_cdm_from_config(gc: GenerateConfig, data: CDMData, ldm: ZoomLDM) -> dict[str, Any]:
    """``mode=cdm_train``: the CDM (``cdm.variant``) trained on ``data`` with ``gc.cdm_train``.

    One process, or one rank of a ``torchrun`` run (DDP: gloo on the CPU, nccl on CUDA); the
    process group is made and destroyed here.

    Args:
        gc: the :class:`~zoomfeat.generation.config.GenerateConfig`.
        data: the prepared tiles (built by the entry point from ``training.shards``).
        ldm: the ZoomLDM whose summarizer makes the targets (moved to this rank's device).

    Returns:
        :meth:`CDMTrainer.summary`.
    """
    from dataclasses import asdict

    from zoomfeat.runtime.distributed import apply_threads, init_distributed, shutdown
    from zoomfeat.runtime.seeding import seeded

    ct = gc.cdm_train
    if data.ssl_channels != ldm.ssl_channels:
        raise ConfigError(
            f"{ct.data}: grids of {data.ssl_channels} channels, but the model's summarizer takes {ldm.ssl_channels}"
        )
    variant = str(gc.cdm.variant).upper().removeprefix("DIT-")
    apply_threads(ct.threads)
    info = init_distributed(gc.device)
    try:
        ldm = ldm.to(info.device).eval()
        cdm = seeded(lambda: DiT.variant(variant, in_channels=ldm.context_dim), gc.seed)
        opts = CDMTrainOptions(
            steps=ct.steps,
            batch_size=ct.batch_size,
            lr=ct.lr,
            ema_decay=ct.ema_decay,
            seed=gc.seed,
            grad_checkpointing=ct.grad_checkpointing,
            log_every=ct.log_every,
            checkpoint_every=ct.checkpoint_every,
            keep_checkpoints=ct.keep_checkpoints,
            resume=ct.resume,
        )
        facts = {
            "model": f"DiT-{variant}",
            "in_channels": int(ldm.context_dim),
            "ldm": str(getattr(ldm, "checkpoint_id", "?")),
            "data": dict(data.fingerprint),
            "config": json.loads(json.dumps(asdict(ct), default=str)),
        }
        stream = CDMStream(ldm, data, gc.seed)
        log = print if info.is_main else None
        return train_cdm(cdm, stream, opts=opts, out_dir=gc.out_dir, info=info, run_facts=facts, log=log)
    finally:
        shutdown(info)
