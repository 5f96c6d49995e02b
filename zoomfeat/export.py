"""``python -m zoomfeat.export OUT_DIR to=clam|stamp|slideflow [sets=...] [dest=...]``: bag mirrors.

Writes, from existing TRIDENT-layout bags, the files CLAM, STAMP or slideflow read
(:mod:`zoomfeat.interop.mirrors`), linking to the bags where the format allows. The composed
``conf/export.yaml`` is validated into :class:`~zoomfeat.interop.config.ExportConfig`; input
errors print one line (``zoomfeat export: error: ...``, exit status 2).
"""

from __future__ import annotations

from typing import Any

from zoomfeat.cli import hydra_main

USAGE = "python -m zoomfeat.export OUT_DIR to=clam|stamp|slideflow [sets=NAME_OR_GLOB] [dest=DIR]"


def run(cfg: Any) -> Any:
    """Hydra task: validate the config, write the mirrors, print where they are and how to use them."""
    from zoomfeat.interop import ExportConfig, export_bags
    from zoomfeat.runtime.config import load_config
    from zoomfeat.runtime.errors import ConfigError

    config = load_config(ExportConfig, cfg, "export")
    if len(config.inputs) != 1:
        raise ConfigError(
            f"export: give exactly one bag directory, got {list(config.inputs)}. Usage: {USAGE}"
        )
    result = export_bags(config.inputs[0], config.to, sets=config.sets, dest=config.dest, mpp=config.mpp)
    print(result.report(), flush=True)
    return result


def main() -> None:
    hydra_main("export", run)


if __name__ == "__main__":
    main()
