"""``conf/generate.yaml`` is ``GenerateConfig``: every key is a field, bad values are refused."""

from __future__ import annotations

import pytest
import yaml

from zoomfeat.generation.config import GenerateConfig
from zoomfeat.runtime.config import load_config
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.resources import config_dir


def test_yaml_is_the_dataclass():
    raw = yaml.safe_load((config_dir() / "generate.yaml").read_text())
    raw = {k: v for k, v in raw.items() if k not in ("defaults", "hydra")}
    gc = load_config(GenerateConfig, raw, "generate")
    assert gc == GenerateConfig()  # the YAML's values are the dataclass defaults
    assert gc.region.index() == 2 and gc.large.n_steps == 10 and gc.cdm.respacing == 200


@pytest.mark.parametrize(
    "override",
    [
        {"mode": "x"},
        {"patch": {"sampler": "euler"}},
        {"large": {"noise_term": "z"}},
        {"large": {"stride": 7}},
        {"unknown": 1},
    ],
)
def test_bad_settings_are_refused(override):
    with pytest.raises(ConfigError):
        load_config(GenerateConfig, override, "generate")


def test_region_magnification():
    gc = load_config(GenerateConfig, {"region": {"mag": "1.25x"}})
    assert gc.region.index() == 4
    with pytest.raises(ConfigError):
        load_config(GenerateConfig, {"region": {"mag": "3x"}}).region.index()
