"""Typed configs: the YAML *is* the dataclass.

Every entry point declares its configuration once, as a dataclass whose nesting is the YAML's
(``features.timestep`` in ``conf/extract.yaml`` is ``ExtractConfig.features.timestep``). Hydra
composes the YAML and the command-line overrides; :func:`load_config` validates the result into
the dataclass with OmegaConf's structured configs:

- an unknown key is refused, naming it and listing the known keys at that level (a typo never
  silently falls back to the default);
- values are converted to the annotated types (``"300"`` -> 300) or refused, naming the key;
- the dataclass's ``__post_init__`` checks ranges and raises :class:`ConfigError`.

So a new option is added in one place (the dataclass field, with its default and its ``#:`` help
comment; the YAML holds its default), and ``docs/options.md`` and the YAML comments are generated from the fields' ``#:`` comments
(:mod:`zoomfeat.options`, tested by ``tests/test_options.py``).
Library code takes these dataclasses, never Hydra objects.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar, cast

from zoomfeat.runtime.errors import ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the raw strings
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _schema_at(cls: type, path: list[str]) -> type | None:
    """The dataclass found by following ``path`` (field names) from ``cls``; None if not a dataclass."""
    node: Any = cls
    for name in path:
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
        node = _field_types(node).get(name)
    return node if isinstance(node, type) and dataclasses.is_dataclass(node) else None


def known_keys(cls: type) -> list[str]:
    """The field names of dataclass ``cls`` (the keys its YAML may hold at that level)."""
    return [f.name for f in dataclasses.fields(cls)]


def iter_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Every leaf key of dataclass ``cls`` as a dotted path, with its field (for docs tables)."""
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        sub = types.get(f.name)
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            yield from iter_keys(sub, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def plain_dict(cfg: Any) -> dict[str, Any]:
    """A composed config (an OmegaConf ``DictConfig`` or a mapping) as a plain dict, resolved."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def load_config(schema: type[T], data: Any, where: str = "config") -> T:
    """Validate ``data`` (a mapping or an OmegaConf config, resolved) into dataclass ``schema``.

    Args:
        schema: the dataclass type (nested dataclasses for nested YAML sections).
        data: the composed config; keys absent from it take the dataclass defaults.
        where: what the config is, for messages (``"extract"``, ``conf/task/brca.yaml`` ...).

    Returns:
        An instance of ``schema`` (its ``__post_init__`` has run).

    Raises:
        ConfigError: unknown key (with the known ones), wrong type, or a value out of range.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), dict(data))
        return cast(T, OmegaConf.to_object(merged))
    except ConfigKeyError as err:
        full = str(getattr(err, "full_key", "") or getattr(err, "key", ""))
        parts = full.split(".")
        sub = _schema_at(schema, parts[:-1])
        known = ", ".join(known_keys(sub)) if sub else "?"
        level = ".".join(parts[:-1])
        raise ConfigError(
            f"{where}: unknown setting {full!r}; known keys{' under ' + level if level else ''}: {known}"
        ) from None
    except ValidationError as err:
        full = str(getattr(err, "full_key", "") or "")
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{where}: {full}: {msg}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts/lists (for JSON, hashing and logs)."""
    return dataclasses.asdict(cfg)


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)
