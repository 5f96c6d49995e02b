"""``python -m zoomfeat.train data=DIR [model=tiny] [init=...] [steps=...] [out_dir=...]``.

Trains ZoomLDM (UNet + summarizer, VQ frozen) on shards made by ``python -m zoomfeat.prepare``.
Resumes from ``out_dir``'s latest checkpoint by default. Multi-GPU:
``torchrun --nproc_per_node=N -m zoomfeat.train ...``. Export a checkpoint to the released
layout: ``python -m zoomfeat.train out_dir=RUN export=RUN/official/weights.ckpt``.
``conf/train.yaml`` is :class:`zoomfeat.training.config.TrainConfig`: every key is there.
"""

from __future__ import annotations

import json
import logging
import os

from zoomfeat.cli import hydra_main

log = logging.getLogger("zoomfeat.train")


def run(cfg) -> dict:
    from zoomfeat.runtime.config import load_config
    from zoomfeat.training.config import TrainConfig

    tc = load_config(TrainConfig, cfg, "train")
    if tc.export:
        from zoomfeat.training.export import export_official

        source = tc.checkpoint or tc.data or tc.out_dir
        path = export_official(source, tc.export)
        print(f"exported {source} -> {path} (+ config.yaml beside it)")
        return {"export": str(path)}
    from zoomfeat.runtime.stopping import run_stoppable
    from zoomfeat.training.trainer import train

    tc.require_data()
    # SIGTERM / SIGINT / SIGUSR1: finish the step, checkpoint, one line, exit 128 + signal (docs/long-runs.md)
    summary = run_stoppable("train", lambda: train(tc))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"train": summary}, default=str))
    return summary


def main() -> None:
    hydra_main("train", run)


if __name__ == "__main__":
    main()
