"""Build multi-scale training shards from slides (``python -m zoomfeat.prepare``).

For every slide of this job's share of the inputs, :class:`~zoomfeat.training.slide_prep.SlidePreparer`
computes, per magnification index m, each tissue tile's VQ latent and the UNI grid of the 20x tiles
it covers, into :mod:`zoomfeat.training.shards` (docs/ARCHITECTURE.md, "Training").

Slides are resumable: a slide whose record says it is done with the same settings (the hash of
:func:`data_settings`) is skipped, and only the magnifications a record lacks are computed. One
bad slide is logged and reported in the summary; the others go on.

The models: the VQ of a ZoomLDM (``model`` section) and the SSL encoder (``encoder`` section).
As for feature extraction, the tiny model and the tiny encoder (tests, the demo) are always
allowed a seeded random init; full-size ones need weights or ``allow_random_weights=true``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoomfeat.runtime import stopping
from zoomfeat.runtime.device import resolve_device, resolve_precision
from zoomfeat.runtime.errors import ConfigError, InputError, ZoomfeatError
from zoomfeat.runtime.provenance import config_hash
from zoomfeat.runtime.units import TILE_PX
from zoomfeat.training.config import PrepareConfig
from zoomfeat.training.shards import FORMAT_VERSION, ShardWriter, read_record
from zoomfeat.training.slide_prep import SlidePreparer, TileEncoders
from zoomfeat.training.vq import vq_fingerprint

if TYPE_CHECKING:
    from zoomfeat.encoders.base import TileEncoder
    from zoomfeat.model.zoomldm import ZoomLDM


log = logging.getLogger("zoomfeat.prepare")

__all__ = ["PrepareConfig", "prepare", "find_slides", "load_models", "data_settings", "vq_fingerprint"]


def load_models(cfg: PrepareConfig) -> tuple[ZoomLDM, TileEncoder]:
    """(ZoomLDM, encoder) of the config's ``model`` and ``encoder`` sections.

    The SSL widths are checked before anything big is built. The tiny model and encoder get a
    seeded random init when no weights are given (like ``extract``); full-size ones need weights
    or ``allow_random_weights``.

    Raises:
        ConfigError: encoder and model of different SSL widths. WeightsError: no weights.
    """
    from zoomfeat.encoders import EMBED_DIM, build_encoder
    from zoomfeat.model import ZoomLDM, read_config

    model_cfg, enc = cfg.model, cfg.encoder

    def check_width(embed_dim: int, ssl_channels: int) -> None:
        if embed_dim != ssl_channels:
            raise ConfigError(
                f"encoder={enc.name} gives {embed_dim}-d embeddings but model={model_cfg.name} is "
                f"conditioned on {ssl_channels}-d ones; pick matching configs (encoder=uni model=zoomldm_brca, encoder=tiny model=tiny)"
            )

    if enc.name in EMBED_DIM:  # before building anything big
        check_width(EMBED_DIM[enc.name], read_config(model_cfg.source())[1]["summarizer"]["input_channels"])
    encoder = build_encoder(
        enc.name,
        enc.checkpoint,
        allow_random_weights=cfg.allow_random_weights or enc.is_tiny,
        seed=cfg.seed,
    )
    model = ZoomLDM.load(
        model_cfg.checkpoint,
        config=model_cfg.source(),
        allow_random_weights=cfg.allow_random_weights or model_cfg.is_tiny,
        seed=cfg.seed,
    )
    check_width(encoder.embed_dim, model.ssl_channels)
    return model, encoder


def data_settings(cfg: PrepareConfig, model: ZoomLDM, encoder: TileEncoder) -> dict[str, Any]:
    """What shapes the data (its hash decides whether a slide's record is still valid)."""
    return {
        "format": FORMAT_VERSION,
        "tile_px": TILE_PX,
        "min_tissue": cfg.min_tissue,
        "mpp": cfg.mpp,
        "tissue": dict(cfg.tissue),
        "encoder": f"{encoder.name}:{getattr(encoder, 'checkpoint_hash', '') or encoder.checkpoint_id}",
        "vq": vq_fingerprint(model),
    }


def find_slides(inputs: list[str | Path], cfg: PrepareConfig) -> list:
    """This job's share of the slides named by ``inputs`` (an :class:`InputError` when there are none)."""
    from zoomfeat.slide.manifest import discover, shard

    try:
        specs = discover(inputs)
    except ZoomfeatError:
        raise
    except (FileNotFoundError, ValueError) as err:
        raise InputError(str(err)) from err
    if not specs:
        raise InputError(
            f"no slides found in {[str(i) for i in inputs]}: pass slide files, directories of slides or manifest CSVs"
        )
    return shard(specs, cfg.shard.index, cfg.shard.count)


def prepare(
    inputs: list[str | Path], cfg: PrepareConfig, model: ZoomLDM, encoder: TileEncoder
) -> dict[str, Any]:
    """Prepare every slide of ``inputs`` (this job's share) into ``cfg.out_dir``.

    Args:
        inputs: slide files, directories of slides, manifest CSVs.
        model: supplies the VQ encoder (ZoomLDM). encoder: the UNI (or tiny) embeddings.

    Returns:
        A summary: slides ``done`` / ``skipped`` / ``failed`` (id -> message), ``tiles`` per
        magnification name, ``config_hash``, ``seconds``, ``settings``.
    """
    specs = find_slides(inputs, cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model.vq.to(device).eval()  # only the VQ encoder is used here
    encoder.to(device).eval()
    settings = data_settings(cfg, model, encoder)
    chash = config_hash(settings)
    writer = ShardWriter(
        cfg.out_dir,
        ssl_channels=encoder.embed_dim,
        config_hash=chash,
        info=_dataset_info(settings, model, encoder),
        pack_rows=cfg.pack_rows,
    )
    encoders = TileEncoders(model, encoder, device=device, precision=precision, batch_size=cfg.batch_size)
    summary: dict[str, Any] = {"done": [], "skipped": [], "failed": {}, "tiles": {}, "config_hash": chash}
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    current = None
    try:
        with writer:
            for spec in tqdm(specs, desc="prepare", unit="slide", disable=not cfg.progress):
                current = None
                stopping.check("")  # a stop signal: take no new slide
                todo = _missing_mags(cfg, spec.path.stem, chash)
                if not todo:
                    summary["skipped"].append(spec.path.stem)
                    continue
                current = spec.path.stem
                _prepare_one(
                    SlidePreparer(spec.path, encoders, cfg=cfg, mags=todo, mpp=spec.mpp), writer, summary
                )
    except stopping.StopRequested as stop:
        n_done, n_left = len(summary["done"]), len(specs) - len(summary["done"]) - len(summary["skipped"])
        raise stopping.StopRequested(
            stop.signum,
            f"{n_done} slide(s) prepared in this run"
            + (f", {current} abandoned (its temporary shards removed)" if current else "")
            + f", {n_left} left; shards are in {cfg.out_dir}. Rerun the same command to prepare the rest "
            "(finished slides are kept)",
        ) from None
    summary["seconds"] = time.perf_counter() - t0
    summary["settings"] = settings
    return summary


def _dataset_info(settings: dict[str, Any], model: ZoomLDM, encoder: TileEncoder) -> dict[str, Any]:
    """``dataset.json``'s content: the encoder and VQ (with their weights), the tile size."""
    config = getattr(model, "config", None)
    return {
        "encoder": settings["encoder"],
        "encoder_name": encoder.name,
        "encoder_checkpoint": encoder.checkpoint_id,
        "vq": settings["vq"],
        "vq_checkpoint": str(getattr(model, "checkpoint_id", "")),
        "model_config": config.get("name") if isinstance(config, dict) else None,
        "tile_px": TILE_PX,
    }


def _prepare_one(preparer: SlidePreparer, writer: ShardWriter, summary: dict[str, Any]) -> None:
    """Run one slide into ``summary`` (done and tiles, or failed with the message: a bad slide
    must not stop a cohort)."""
    path = preparer.path
    try:
        res = preparer.run(writer)
    except stopping.StopRequested:
        raise  # not the slide's failure: the run stops (its temporaries were removed on the way out)
    except (ZoomfeatError, FileNotFoundError) as err:
        log.error("%s: %s", path, err)
        summary["failed"][path.stem] = str(err)
        return
    except Exception as err:  # noqa: BLE001 - one bad slide must not stop a cohort
        log.exception("%s: failed", path)
        summary["failed"][path.stem] = f"{type(err).__name__}: {err}"
        return
    summary["done"].append(path.stem)
    for k, v in res["tiles"].items():
        summary["tiles"][k] = summary["tiles"].get(k, 0) + v
    log.info(
        "%s: %s tiles (%d UNI tiles) in %.1f s", path.stem, res["tiles"], res["uni_tiles"], res["seconds"]
    )


def _missing_mags(cfg: PrepareConfig, slide_id: str, chash: str) -> list[int]:
    """The magnification indices of ``cfg.mags`` the slide's record lacks (all if no valid record)."""
    rec = read_record(cfg.out_dir, slide_id)
    have = set(rec.get("mags", {})) if rec and rec.get("config_hash") == chash else set()
    return [
        m
        for m in cfg.mags
        if str(m) not in have
        or rec is None
        or not (Path(cfg.out_dir) / rec["mags"][str(m)]["file"]).is_file()
    ]
