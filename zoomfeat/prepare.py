"""``python -m zoomfeat.prepare SLIDES... out_dir=DIR [mags=[20x,10x,5x,2.5x,1.25x]] [encoder=uni|tiny] [model=...]``.

Builds multi-scale ZoomLDM training shards (VQ latent + UNI grid per tissue tile and
magnification). Resumable per slide; several jobs can share the slide list with
``shard.index``/``shard.count`` (Hydra multirun). See conf/prepare.yaml for every key.
"""

from __future__ import annotations

import json
import sys

from zoomfeat.cli import hydra_main


def run(cfg) -> dict:
    from omegaconf import OmegaConf

    from zoomfeat.encoders import EMBED_DIM, build_encoder
    from zoomfeat.model import ZoomLDM
    from zoomfeat.model.checkpoint import read_config
    from zoomfeat.training.prepare import PrepareConfig, prepare

    c = OmegaConf.to_container(cfg, resolve=True)
    inputs = list(c.get("inputs") or [])
    if not inputs:
        raise ValueError("no slides given: `python -m zoomfeat.prepare SLIDE_OR_DIR_OR_CSV... out_dir=DIR`")
    pc = PrepareConfig(
        out_dir=str(c["out_dir"]),
        mags=list(c["mags"]),
        min_tissue=float(c["min_tissue"]),
        mpp=c.get("mpp"),
        batch_size=int(c["batch_size"]),
        num_workers=int(c["num_workers"]),
        device=str(c["device"]),
        precision=str(c["precision"]),
        pack_rows=int(c["pack_rows"]),
        tissue=dict(c.get("tissue") or {}),
        shard_index=int(c["shard"]["index"]),
        shard_count=int(c["shard"]["count"]),
        progress=bool(c.get("progress", True)),
    )
    allow_random = bool(c.get("allow_random_weights", False))
    model_cfg = dict(c["model"])
    enc = c["encoder"]

    def check_width(embed_dim: int, ssl_channels: int) -> None:
        if embed_dim != ssl_channels:
            raise ValueError(
                f"encoder={enc['name']} gives {embed_dim}-d embeddings but model={model_cfg.get('name')} is "
                f"conditioned on {ssl_channels}-d ones; pick matching configs (encoder=uni model=zoomldm_brca, encoder=tiny model=tiny)"
            )

    if enc["name"] in EMBED_DIM:  # before building anything big
        check_width(EMBED_DIM[enc["name"]], read_config(model_cfg)[1]["summarizer"]["input_channels"])
    encoder = build_encoder(
        enc["name"], enc.get("checkpoint"), allow_random_weights=allow_random, seed=int(c["seed"])
    )
    model = ZoomLDM.load(
        model_cfg.get("checkpoint"), config=model_cfg, allow_random_weights=allow_random, seed=int(c["seed"])
    )
    check_width(encoder.embed_dim, model.ssl_channels)
    summary = prepare(inputs, pc, model, encoder)
    print(json.dumps({"prepare": {k: v for k, v in summary.items() if k != "settings"}}, default=str))
    if summary["failed"]:
        print(f"{len(summary['failed'])} slide(s) failed: {sorted(summary['failed'])}", file=sys.stderr)
        sys.exit(1)
    return summary


def main() -> None:
    hydra_main("prepare", run)


if __name__ == "__main__":
    main()
