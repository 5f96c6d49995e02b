"""``python -m zoomfeat.generate mode=patch|large|superres SLIDE [key=value ...]``.

Generates with ZoomLDM (see ``zoomfeat.generation``): patches at any magnification conditioned on
a slide region (or CDM samples), large 20x images by joint multi-scale sampling under a
low-magnification guide region (PNG + pyramidal TIFF), and super-resolution of a real
low-magnification image. ``dry_run=true`` prints the UNet/VQ call counts and FLOPs of the request.
``conf/generate.yaml`` is :class:`zoomfeat.generation.config.GenerateConfig`: every key is there.
"""

from __future__ import annotations

import json

from zoomfeat.cli import hydra_main


def run(cfg) -> dict:
    from zoomfeat.generation.config import GenerateConfig
    from zoomfeat.generation.workflow import generate
    from zoomfeat.runtime.config import load_config

    gc = load_config(GenerateConfig, cfg, "generate")
    if gc.mode == "cdm_train" and not gc.dry_run:
        summary = train_cdm_on_shards(gc)
        print(json.dumps({"cdm_train": summary}, default=str))
        return summary
    summary = generate(gc)
    if not gc.dry_run:
        print(json.dumps({"generate": summary["outputs"]}, default=str))
    return summary


def train_cdm_on_shards(gc) -> dict:
    """``mode=cdm_train``: the CDM trained on ``prepare``'s shards (joins training.shards and generation).

    Writes ``out_dir/cdm_last.pt`` (model, EMA, optimiser, step; re-read with ``weights_only``)
    and ``out_dir/cdm_ema.safetensors`` (the EMA weights, what ``cdm.checkpoint`` loads).
    """
    import torch
    from safetensors.torch import save_file

    from zoomfeat.generation.cdm import DiT
    from zoomfeat.generation.cdm_training import CDMTrainOptions, grid_batches, train_cdm
    from zoomfeat.generation.workflow import load_ldm
    from zoomfeat.runtime.atomic import atomic_path, ensure_dir
    from zoomfeat.runtime.device import resolve_device
    from zoomfeat.runtime.errors import ConfigError, WeightsError
    from zoomfeat.training.shards.reader import ShardIndex, ShardReader

    ct = gc.cdm_train
    if not ct.data:
        raise ConfigError(
            "mode=cdm_train needs cdm_train.data=<directory written by python -m zoomfeat.prepare>"
        )
    device = resolve_device(gc.device)
    out = ensure_dir(gc.out_dir)
    index = ShardIndex.load(ct.data)
    reader = ShardReader(index)
    ldm = load_ldm(gc, device)
    if index.ssl_channels != ldm.ssl_channels:
        raise ConfigError(
            f"{ct.data}: grids of {index.ssl_channels} channels, but the model's summarizer takes {ldm.ssl_channels}"
        )
    torch.manual_seed(gc.seed)
    cdm = DiT.variant(gc.cdm.variant, in_channels=ldm.context_dim).to(device)
    batches = grid_batches(ldm, index.counts(), lambda m, i: reader.read(m, i)["ssl"], ct.batch_size, gc.seed)
    last = out / "cdm_last.pt"
    state = None
    if ct.resume and last.is_file():
        try:
            state = torch.load(last, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - refuse anything but plain tensors and containers
            raise WeightsError(
                f"{last}: cannot resume from it ({err}); delete it or set cdm_train.resume=false"
            ) from None

    def save(st: dict) -> None:
        with atomic_path(last) as tmp:
            torch.save(st, tmp)

    opts = CDMTrainOptions(
        ct.steps,
        ct.batch_size,
        ct.lr,
        0.0,
        ct.ema_decay,
        gc.seed,
        ct.grad_checkpointing,
        ct.log_every,
        ct.checkpoint_every,
    )
    result = train_cdm(cdm, batches, opts, state, save, log=print)
    ema_path = out / "cdm_ema.safetensors"
    with atomic_path(ema_path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in result["ema"].items()}, str(tmp))
    return {"step": result["step"], "checkpoint": str(last), "ema": str(ema_path), "tiles": index.counts()}


def main() -> None:
    hydra_main("generate", run)


if __name__ == "__main__":
    main()
