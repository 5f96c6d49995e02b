"""``python -m zoomfeat.generate mode=patch|large|superres SLIDE [key=value ...]``.

Generates with ZoomLDM (see ``zoomfeat.generation``): patches at any magnification conditioned on
a slide region (or CDM samples), large 20x images by joint multi-scale sampling under a
low-magnification guide region (PNG + pyramidal TIFF), and super-resolution of a real
low-magnification image. ``dry_run=true`` prints the UNet/VQ call counts and FLOPs of the request.
``conf/generate.yaml`` is :class:`zoomfeat.generation.config.GenerateConfig`: every key is there.
"""

from __future__ import annotations

import json
import os

from zoomfeat.cli import hydra_main


def run(cfg) -> dict:
    from zoomfeat.generation.config import GenerateConfig
    from zoomfeat.generation.workflow import generate
    from zoomfeat.runtime.config import load_config
    from zoomfeat.runtime.stopping import run_stoppable

    gc = load_config(GenerateConfig, cfg, "generate")
    if gc.mode == "cdm_train" and not gc.dry_run:
        # SIGTERM / SIGINT / SIGUSR1: finish the step, checkpoint, one line, exit 128 + signal
        summary = run_stoppable("generate", lambda: train_cdm_on_shards(gc))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps({"cdm_train": summary}, default=str))
        return summary
    # SIGTERM / SIGINT / SIGUSR1: the request ends after the sampler step in hand, nothing of it
    # written, one line, exit 128 + signal (zoomfeat.generation.workflow)
    summary = generate(gc) if gc.dry_run else run_stoppable("generate", lambda: generate(gc))
    if not gc.dry_run:
        print(json.dumps({"generate": summary["outputs"]}, default=str))
    return summary


def train_cdm_on_shards(gc) -> dict:
    """``mode=cdm_train``: the CDM trained on ``prepare``'s shards (joins training.shards and generation).

    Checkpoints as the ZoomLDM trainer's (``out_dir/checkpoints/step-N``, ``latest``; resume,
    DDP under torchrun): see :mod:`zoomfeat.generation.cdm_training`. Each checkpoint's
    ``cdm_ema.safetensors`` (the EMA weights) is what ``cdm.checkpoint`` loads.
    """
    import torch

    from zoomfeat.generation.cdm_data import CDMData
    from zoomfeat.generation.cdm_training import train_cdm_from_config
    from zoomfeat.generation.workflow import load_ldm
    from zoomfeat.runtime.errors import ConfigError
    from zoomfeat.training.shards.reader import ShardIndex, ShardReader

    ct = gc.cdm_train
    if not ct.data:
        raise ConfigError(
            "mode=cdm_train needs cdm_train.data=<directory written by python -m zoomfeat.prepare>"
        )
    index = ShardIndex.load(ct.data)
    reader = ShardReader(index)
    data = CDMData(
        index.counts(), lambda m, i: reader.read(m, i)["ssl"], index.ssl_channels, index.fingerprint()
    )
    summary = train_cdm_from_config(gc, data, load_ldm(gc, torch.device("cpu")))
    return {**summary, "tiles": index.counts()}


def main() -> None:
    hydra_main("generate", run)


if __name__ == "__main__":
    main()
