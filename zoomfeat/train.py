"""``python -m zoomfeat.train data=DIR [model=tiny] [init=...] [steps=...] [out_dir=...]``.

Trains ZoomLDM (UNet + summarizer, VQ frozen) on shards made by ``python -m zoomfeat.prepare``.
Resumes from ``out_dir``'s latest checkpoint by default. Multi-GPU:
``torchrun --nproc_per_node=N -m zoomfeat.train ...``. Export a checkpoint to the released
layout: ``python -m zoomfeat.train out_dir=RUN export=RUN/official/weights.ckpt``.
See conf/train.yaml for every key.
"""

from __future__ import annotations

import json
import logging

from zoomfeat.cli import hydra_main

log = logging.getLogger("zoomfeat.train")


def run(cfg) -> dict:
    from omegaconf import OmegaConf

    from zoomfeat.training.loop import SampleConfig, TrainConfig, train

    c = OmegaConf.to_container(cfg, resolve=True)
    inputs = list(c.get("inputs") or [])
    if c.get("export"):
        from zoomfeat.training.export import export_official

        source = c.get("checkpoint") or (inputs[0] if inputs else None) or c["out_dir"]
        path = export_official(source, c["export"])
        print(f"exported {source} -> {path} (+ config.yaml beside it)")
        return {"export": str(path)}
    data = c.get("data")
    if inputs:
        if data or len(inputs) > 1:
            raise ValueError(
                f"give the training data directory once (data=DIR), got data={data!r} and inputs {inputs}"
            )
        data = inputs[0]
    if not data:
        raise ValueError("no training data: pass data=DIR (a directory made by `python -m zoomfeat.prepare`)")
    model_cfg = dict(c["model"])
    init = c.get("init") or model_cfg.get("checkpoint")
    tc = TrainConfig(
        data_dir=str(data),
        out_dir=str(c["out_dir"]),
        model=model_cfg,
        init=init,
        seed=int(c["seed"]),
        steps=int(c["steps"]),
        batch_size=int(c["batch_size"]),
        grad_accum=int(c["grad_accum"]),
        lr=float(c["lr"]),
        warmup_steps=int(c["warmup_steps"]),
        weight_decay=float(c["weight_decay"]),
        max_grad_norm=c.get("max_grad_norm"),
        ema_decay=float(c["ema"]["decay"]),
        ema_warmup=bool(c["ema"]["warmup"]),
        p_uncond=c.get("p_uncond"),
        mags=c.get("mags"),
        mag_weights=c.get("mag_weights"),
        precision=str(c["precision"]),
        gradient_checkpointing=bool(c["gradient_checkpointing"]),
        num_workers=int(c["num_workers"]),
        device=str(c["device"]),
        checkpoint_every=int(c["checkpoint_every"]),
        keep_checkpoints=int(c["keep_checkpoints"]),
        log_every=int(c["log_every"]),
        resume=c.get("resume", "auto"),
        overfit_batch=bool(c.get("overfit_batch", False)),
        progress=bool(c.get("progress", True)),
        ddp_find_unused_parameters=bool(c.get("ddp_find_unused_parameters", True)),
        samples=SampleConfig(**c["samples"]),
    )
    summary = train(tc)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"train": summary}, default=str))
    return summary


def main() -> None:
    hydra_main("train", run)


if __name__ == "__main__":
    main()
