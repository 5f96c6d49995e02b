"""zoomfeat.runtime.config: the YAML is the dataclass; unknown keys and bad values are refused by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from omegaconf import OmegaConf

from zoomfeat.runtime.config import check, iter_keys, load_config
from zoomfeat.runtime.errors import ConfigError


@dataclass
class Inner:
    timestep: int = 200
    taps: list[str] = field(default_factory=lambda: ["middle_block"])


@dataclass
class Outer:
    features: Inner = field(default_factory=Inner)
    mpp: float | None = None
    workers: Any = "auto"

    def __post_init__(self):
        check(
            self.features.timestep < 1000,
            f"features.timestep must lie in [0, 1000), got {self.features.timestep}",
        )


def test_values_are_converted_and_defaults_kept():
    cfg = load_config(Outer, {"features": {"timestep": "300"}, "mpp": 0.5}, "extract")
    assert isinstance(cfg, Outer) and isinstance(cfg.features, Inner)
    assert cfg.features.timestep == 300 and cfg.features.taps == ["middle_block"] and cfg.mpp == 0.5
    assert load_config(Outer, OmegaConf.create({"workers": 4})).workers == 4


def test_unknown_key_is_named_with_the_known_ones():
    with pytest.raises(
        ConfigError,
        match=r"extract: unknown setting 'features.timestp'; known keys under features: timestep, taps",
    ):
        load_config(Outer, {"features": {"timestp": 3}}, "extract")
    with pytest.raises(ConfigError, match=r"unknown setting 'mmp'; known keys: features, mpp, workers"):
        load_config(Outer, {"mmp": 3}, "extract")


def test_wrong_type_and_range_are_named():
    with pytest.raises(ConfigError, match=r"features.timestep: Value 'abc'"):
        load_config(Outer, {"features": {"timestep": "abc"}}, "extract")
    with pytest.raises(ConfigError, match=r"features.timestep must lie in \[0, 1000\), got 5000"):
        load_config(Outer, {"features": {"timestep": 5000}}, "extract")


def test_iter_keys_lists_dotted_leaves():
    assert [k for k, _ in iter_keys(Outer)] == ["features.timestep", "features.taps", "mpp", "workers"]
