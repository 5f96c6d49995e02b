"""``python -m zoomfeat.extract SLIDE_OR_DIR_OR_CSV... [key=value ...]``: slides -> feature bags.

Bare arguments are slides, directories of slides or manifest CSVs; the rest are Hydra
overrides of ``conf/extract.yaml`` (``out_dir=``, ``model=tiny``, ``features.timestep=``,
``shard.index=`` ...; ``--multirun`` with ``hydra/launcher=joblib`` or ``submitit_slurm``).
``demo=true`` extracts the built-in demo slide with the tiny model and encoder.

The composed config is validated into :class:`~zoomfeat.features.config.ExtractConfig` (the
YAML's shape; unknown keys are refused). The exit status is 0 when every slide was extracted or
already complete, 1 when any failed or no slides were given, 2 for a user error stopping the run
(one line ``zoomfeat extract: error: ...``; ``ZOOMFEAT_DEBUG=1`` shows the trace).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from omegaconf import OmegaConf

from zoomfeat.cli import hydra_main, in_multirun

USAGE = (
    "zoomfeat extract: no slides given. Usage: python -m zoomfeat.extract SLIDE_OR_DIR_OR_CSV... [key=value ...] "
    "(or demo=true for the built-in demo slide)"
)


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


def load_extract_config(cfg) -> Any:
    """The :class:`ExtractConfig` of a composed Hydra config.

    With ``demo=true`` the model and encoder groups are ``tiny`` unless the command line names others.
    """
    from zoomfeat.features.config import ExtractConfig, group_section
    from zoomfeat.runtime.config import load_config, plain_dict

    data = plain_dict(cfg)
    if data.get("demo"):
        for group in ("model", "encoder"):
            if not _overridden(group):
                data[group] = group_section(group, "tiny")
    return load_config(ExtractConfig, data, "extract")


def no_slides_message(inputs: list[str]) -> str:
    """What to say when the inputs name no slide: which directories, what was looked for, what to do."""
    from pathlib import Path

    from zoomfeat.slide.manifest import kinds_looked_for

    parts = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files = [f for f in p.iterdir() if not f.name.startswith(".")]
            others = sorted({f.suffix.lower() or f.name for f in files if f.is_file()})[:8]
            subdirs = sum(f.is_dir() for f in files)
            held = (
                "it is empty"
                if not files
                else "it holds "
                + ", ".join(
                    x
                    for x in (
                        f"files ending {', '.join(others)}" if others else "",
                        f"{subdirs} folder(s) (not searched)" if subdirs else "",
                    )
                    if x
                )
            )
            parts.append(f"directory {p} ({held})")
        else:
            parts.append(f"manifest {p} (no rows)" if p.suffix.lower() == ".csv" else str(p))
    return (
        f"no slide files in {'; '.join(parts)}. Looked for, directly inside a directory: {kinds_looked_for()}. "
        "Give the slide files themselves, "
        "the folder that holds them, or a manifest CSV with a 'path' column"
    )


def run(cfg) -> Any:
    """Hydra task: discover slides, extract this shard, print the summary; returns the RunSummary."""
    from zoomfeat.runtime.errors import InputError
    from zoomfeat.runtime.resources import demo_slide
    from zoomfeat.slide.manifest import discover

    config = load_extract_config(cfg)
    inputs = list(config.inputs)
    if config.demo and not inputs:
        inputs = [str(demo_slide())]
    if not inputs:
        raise SystemExit(USAGE)
    slides = discover(inputs, storage_options=config.storage_options)
    if not slides:
        raise InputError(no_slides_message(inputs))
    from zoomfeat.features.runner import extract_slides  # torch: only once there are slides

    shard = config.shard
    from zoomfeat.runtime.stopping import run_stoppable

    # SIGTERM / SIGINT: the slides in hand abandoned (nothing published), workers ended, one line, exit 128 + signal
    summary = run_stoppable(
        "extract",
        lambda: extract_slides(
            slides, config.out_dir, config, shard_index=shard.index, shard_count=shard.count
        ),
    )
    print(summary.report(), flush=True)
    if not summary.ok and in_multirun():
        # a multirun job's return value never reaches main(): fail the job so the sweep fails
        names = ", ".join(r.slide_id for r in summary.failed)
        raise RuntimeError(
            f"{len(summary.failed)} slide(s) failed in shard {shard.index}/{shard.count}: {names}"
        )
    return summary


def main() -> None:
    summary = hydra_main("extract", run)
    if summary is not None and not summary.ok:
        # one line per failed slide on stderr, as for errors that stop the run (exit status 1)
        for r in summary.failed:
            print(f"zoomfeat extract: error: {re.sub(r'^[A-Za-z]*Error: ', '', r.error)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
