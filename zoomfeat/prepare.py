"""``python -m zoomfeat.prepare SLIDES... out_dir=DIR [mags=[20x,10x,5x,2.5x,1.25x]] [encoder=uni|tiny] [model=...]``.

Builds multi-scale ZoomLDM training shards (VQ latent + UNI grid per tissue tile and
magnification). Resumable per slide; several jobs can share the slide list with
``shard.index``/``shard.count`` (Hydra multirun). ``conf/prepare.yaml`` is
:class:`zoomfeat.training.config.PrepareConfig`: every key is there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from zoomfeat.cli import hydra_main


def run(cfg) -> dict:
    from zoomfeat.runtime.config import load_config
    from zoomfeat.runtime.errors import InputError
    from zoomfeat.runtime.stopping import run_stoppable
    from zoomfeat.training.config import PrepareConfig
    from zoomfeat.training.prepare import find_slides, load_models, prepare

    pc = load_config(PrepareConfig, cfg, "prepare")
    if not pc.inputs:
        raise InputError("no slides given: `python -m zoomfeat.prepare SLIDE_OR_DIR_OR_CSV... out_dir=DIR`")
    inputs: list[str | Path] = list(pc.inputs)
    find_slides(inputs, pc)  # a bad slide list fails before any model is built
    model, encoder = load_models(pc)
    # SIGTERM / SIGINT: the slide in hand is abandoned (temporaries removed), one line, exit 128 + signal
    summary = run_stoppable("prepare", lambda: prepare(inputs, pc, model, encoder))
    print(json.dumps({"prepare": {k: v for k, v in summary.items() if k != "settings"}}, default=str))
    failed = summary["failed"]
    if failed:
        # one line per failed slide, then what to do; the other slides' shards are complete
        for slide_id, why in sorted(failed.items()):
            print(f"zoomfeat prepare: error: {slide_id}: {why}", file=sys.stderr)
        print(
            f"zoomfeat prepare: {len(failed)} slide(s) failed and were skipped; fix or remove them and rerun "
            "the same command (finished slides are kept)",
            file=sys.stderr,
        )
        sys.exit(1)
    return summary


def main() -> None:
    hydra_main("prepare", run)


if __name__ == "__main__":
    main()
