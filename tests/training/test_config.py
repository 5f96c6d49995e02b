"""conf/train.yaml and conf/prepare.yaml are the dataclasses: same keys, unknown keys refused."""

from __future__ import annotations

import pytest
import yaml

from zoomfeat.runtime.config import iter_keys, load_config
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.resources import config_dir, config_file
from zoomfeat.training.config import ModelSection, PrepareConfig, TrainConfig


def _yaml_keys(doc: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in doc.items():
        if k in ("defaults", "hydra"):
            continue
        if isinstance(v, dict) and v:
            keys |= _yaml_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


@pytest.mark.parametrize("name,schema", [("train", TrainConfig), ("prepare", PrepareConfig)])
def test_yaml_is_the_dataclass(name, schema):
    doc = yaml.safe_load((config_dir() / f"{name}.yaml").read_text())
    schema_keys = {k for k, _ in iter_keys(schema) if k.split(".")[0] not in ("model", "encoder")}
    assert _yaml_keys(doc) == schema_keys
    # the YAML's values load as they are, and equal the dataclass defaults
    doc = {k: v for k, v in doc.items() if k not in ("defaults", "hydra")}
    loaded = load_config(schema, doc, name)
    assert loaded == load_config(schema, {}, name)


def test_group_files_load_as_sections():
    for group, names in (("model", ("tiny", "zoomldm_brca")), ("encoder", ("tiny", "uni"))):
        for n in names:
            doc = yaml.safe_load(config_file(group, n).read_text())
            cfg = load_config(PrepareConfig, {group: doc}, "prepare")
            assert getattr(cfg, group).name == n
    assert load_config(
        TrainConfig, {"model": yaml.safe_load(config_file("model", "tiny").read_text())}
    ).model.is_tiny


def test_unknown_keys_are_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown setting 'stpes'; known keys: inputs, data, .*steps"):
        load_config(TrainConfig, {"stpes": 3}, "train")
    with pytest.raises(ConfigError, match=r"unknown setting 'ema.decy'; known keys under ema: decay, warmup"):
        load_config(TrainConfig, {"ema": {"decy": 0.9}}, "train")
    with pytest.raises(
        ConfigError, match=r"unknown setting 'shard.idx'; known keys under shard: index, count"
    ):
        load_config(PrepareConfig, {"shard": {"idx": 1}}, "prepare")
    with pytest.raises(ConfigError, match=r"unknown setting 'model.unett'"):
        load_config(PrepareConfig, {"model": {"unett": {}}}, "prepare")


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="precision must be auto"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="give the training data directory once"):
        TrainConfig(inputs=["a", "b"])
    assert TrainConfig(inputs=["a"]).data == "a"
    with pytest.raises(ConfigError, match="mags: unknown magnification '3x'"):
        PrepareConfig(mags=["3x"])
    with pytest.raises(ConfigError, match=r"shard.index must be in \[0, shard.count\)"):
        load_config(PrepareConfig, {"shard": {"index": 2, "count": 2}}, "prepare")
    with pytest.raises(ConfigError, match="steps"):
        load_config(TrainConfig, {"steps": "many"}, "train")
    assert PrepareConfig(mags=["5x", 0, "20x"]).mags == [0, 2]
    assert TrainConfig(model="tiny").model == ModelSection(name="tiny")
    assert TrainConfig(init=None, model={"name": "tiny", "checkpoint": "w.ckpt"}).init_source == "w.ckpt"
