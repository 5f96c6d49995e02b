"""``python -m zoomfeat.extract SLIDE_OR_DIR_OR_CSV... [key=value ...]``: slides -> feature bags.

Bare arguments are slides, directories of slides or manifest CSVs; the rest are Hydra
overrides of ``conf/extract.yaml`` (``out_dir=``, ``model=tiny``, ``features.timestep=``,
``shard.index=`` ...; ``--multirun`` with ``hydra/launcher=joblib`` or ``submitit_slurm``).
``demo=true`` extracts the built-in demo slide with the tiny model and encoder.

The exit status is 0 when every slide was extracted or already complete, 1 when any failed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from omegaconf import OmegaConf

from zoomfeat.cli import hydra_main


def _default_out_dir(demo: Any) -> str:
    return "zoomfeat_demo" if str(demo).lower() == "true" else "zoomfeat_features"


# Registered at import so that Hydra (and joblib/submitit job processes) can resolve out_dir.
OmegaConf.register_new_resolver("zoomfeat_default_out_dir", _default_out_dir, replace=True)


def _overridden(key: str) -> bool:
    """Whether ``key=...`` was given on the command line (for demo defaults)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except Exception:  # noqa: BLE001 - not running under Hydra
        return False
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def config_from_hydra(cfg) -> tuple[Any, dict[str, Any]]:
    """(ExtractConfig, run settings) from the composed Hydra config."""
    from zoomfeat.features.config import ExtractConfig

    c = OmegaConf.to_container(cfg, resolve=True)
    demo = bool(c.get("demo", False))
    model, encoder = c["model"], c["encoder"]
    model_name, encoder_name = model.get("name"), encoder.get("name")
    if demo:
        # the demo runs the tiny model and encoder unless the command line names others
        if not _overridden("model"):
            model_name, model["checkpoint"] = "tiny", None
        if not _overridden("encoder"):
            encoder_name, encoder["checkpoint"] = "tiny", None
    extract = ExtractConfig(
        model=model_name,
        model_checkpoint=model.get("checkpoint"),
        encoder=encoder_name,
        encoder_checkpoint=encoder.get("checkpoint"),
        timestep=c["features"]["timestep"],
        taps=tuple(c["features"]["taps"]),
        ensemble=c["features"]["ensemble"],
        seed=c["seed"],
        tile_px=c["tile_px"],
        min_tissue=c["tissue"]["min_tissue"],
        mpp=c["mpp"],
        precision=c["precision"],
        batch_size=c["batch_size"],
        num_workers=c["num_workers"],
        device=c["device"],
        compile=c["compile"],
        overwrite=c["overwrite"],
        allow_random_weights=c["allow_random_weights"],
        preview=c["preview"],
        progress=c["progress"],
    )
    run = {"inputs": list(c.get("inputs") or []), "demo": demo, "out_dir": c["out_dir"], "shard": c["shard"]}
    return extract, run


def run(cfg) -> Any:
    """Hydra task: discover slides, extract this shard, print the summary; returns the RunSummary."""
    from zoomfeat.features.runner import extract_slides
    from zoomfeat.runtime.resources import demo_slide
    from zoomfeat.slide.manifest import discover

    extract, settings = config_from_hydra(cfg)
    inputs = settings["inputs"]
    if settings["demo"] and not inputs:
        inputs = [str(demo_slide())]
    if not inputs:
        raise SystemExit(
            "zoomfeat extract: no slides given. Usage: python -m zoomfeat.extract SLIDE_OR_DIR_OR_CSV... [key=value ...] "
            "(or demo=true for the built-in demo slide)"
        )
    shard = settings["shard"]
    try:
        slides = discover(inputs)
        if not slides:
            raise FileNotFoundError(f"no slide files found in {inputs}")
        summary = extract_slides(
            slides, settings["out_dir"], extract, int(shard["index"]), int(shard["count"])
        )
    except (ValueError, OSError, RuntimeError) as err:
        # Set-up errors (no weights, bags from another config, bad inputs) escape the per-slide
        # handling: one clear line instead of a traceback; multirun jobs re-raise for Hydra.
        if _multirun() or os.environ.get("ZOOMFEAT_TRACEBACK"):
            raise
        raise SystemExit(f"zoomfeat extract: error: {err}") from err
    print(summary.report(), flush=True)
    if not summary.ok and _multirun():
        # a multirun job's return value never reaches main(): fail the job so the sweep fails
        names = ", ".join(r.slide_id for r in summary.failed)
        raise RuntimeError(
            f"{len(summary.failed)} slide(s) failed in shard {int(shard['index'])}/{int(shard['count'])}: {names}"
        )
    return summary


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not running under Hydra
        return False


def main() -> None:
    summary = hydra_main("extract", run)
    if summary is not None and not summary.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
