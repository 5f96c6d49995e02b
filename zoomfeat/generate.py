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
    summary = generate(gc)
    if not gc.dry_run:
        print(json.dumps({"generate": summary["outputs"]}, default=str))
    return summary


def main() -> None:
    hydra_main("generate", run)


if __name__ == "__main__":
    main()
