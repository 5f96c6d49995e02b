"""Where the Hydra configs live, in a source checkout and in an installed wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from zoomfeat.runtime.errors import ConfigError


def config_dir() -> Path:
    """Directory holding ``extract.yaml``, ``model/``, ``task/`` ...

    A source checkout keeps them in ``<repo>/conf``; the wheel ships the same files as the
    package ``zoomfeat.conf`` (see ``[tool.setuptools] package-dir`` in pyproject.toml).
    """
    source = Path(__file__).resolve().parents[2] / "conf"
    if (source / "extract.yaml").is_file() or (source / "model").is_dir():
        return source
    try:
        installed = Path(str(resources.files("zoomfeat.conf")))
    except ModuleNotFoundError as err:  # pragma: no cover - broken install
        raise FileNotFoundError("zoomfeat's config directory (conf/) is missing from this install") from err
    return installed


def config_file(group: str, name: str) -> Path:
    """Path of ``conf/{group}/{name}.yaml``; a clear error listing the choices when absent."""
    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        raise ConfigError(f"no config '{name}' in conf/{group}/ (choices: {', '.join(choices) or 'none'})")
    return path


def demo_slide() -> Path:
    """The built-in demo slide: CMU-1-Small-Region.svs (OpenSlide test data, CC0)."""
    return Path(str(resources.files("zoomfeat") / "data" / "CMU-1-Small-Region.svs"))
