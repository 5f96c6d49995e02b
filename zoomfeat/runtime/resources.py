"""Where the Hydra configs live, in a source checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

from zoomfeat.runtime.errors import ConfigError


def config_dir() -> Path:
    """Directory holding ``extract.yaml``, ``model/``, ``task/`` ...: ``zoomfeat/conf`` inside the package.

    The configs are plain files of the package (package data), so a source checkout, an editable
    install and an installed wheel all find them at a real path next to this module.
    """
    path = Path(__file__).resolve().parents[1] / "conf"
    if not (path / "extract.yaml").is_file():  # pragma: no cover - broken install
        raise ConfigError(
            f"zoomfeat's config directory is missing from this install ({path}); reinstall zoomfeat"
        )
    return path


def config_file(group: str, name: str) -> Path:
    """Path of ``conf/{group}/{name}.yaml``; a clear error listing the choices when absent."""
    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        raise ConfigError(f"no config '{name}' in conf/{group}/ (choices: {', '.join(choices) or 'none'})")
    return path


def package_data(*parts: str) -> Path:
    """Path of a file shipped in ``zoomfeat/data/`` (package data, a real file in every install)."""
    return Path(__file__).resolve().parents[1].joinpath("data", *parts)


def demo_slide() -> Path:
    """The built-in demo slide: CMU-1-Small-Region.svs (OpenSlide test data, CC0)."""
    return package_data("CMU-1-Small-Region.svs")
