"""Model configs: official and native YAML agree, clear errors (zoomfeat.model.config)."""

from __future__ import annotations

import json

import pytest
import yaml

from zoomfeat.model import config as mc
from zoomfeat.runtime.errors import ConfigError, WeightsNotFoundError


def test_official_and_native_configs_agree(golden_dir):
    name_o, arch_o = mc.read_config(golden_dir / "zoomldm_tiny.yaml")
    name_n, arch_n = mc.read_config("tiny")
    assert (name_o, name_n) == ("zoomldm_tiny", "tiny")
    assert arch_o == arch_n
    # official YAML written by save_official parses back to the same architecture
    _, back = mc.read_config(mc.official_config(arch_n))
    assert back == arch_n
    _, brca = mc.read_config("zoomldm_brca")
    assert brca["unet"]["use_fp16"] is True and brca["summarizer"]["input_channels"] == 1024
    assert yaml.safe_load(yaml.safe_dump(brca)) == brca  # plain data


def test_config_errors(golden_dir, tmp_path):
    with open(golden_dir / "zoomldm_tiny.yaml") as f:
        doc = yaml.safe_load(f)
    bad = json.loads(json.dumps(doc))
    bad["model"]["params"]["cond_stage_config"]["target"] = "ldm.modules.encoders.modules.ClassEmbedder"
    with pytest.raises(ConfigError, match="cond_stage_config target"):
        mc.read_config(bad)
    bad = json.loads(json.dumps(doc))
    bad["model"]["params"]["unet_config"]["params"]["context_dim"] = 32
    with pytest.raises(
        ConfigError, match="context_dim \\(32\\) must equal summarizer output_channels \\(64\\)"
    ):
        mc.read_config(bad)
    with pytest.raises(ConfigError, match="no config 'nope' in conf/model/"):
        mc.read_config("nope")
    with pytest.raises(WeightsNotFoundError, match="model config not found"):
        mc.read_config(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- the model config section


def test_every_model_group_file_is_a_model_section():
    """conf/model/*.yaml *is* ModelSection: it loads without unknown keys, and reads back the same."""
    from zoomfeat.runtime.config import load_config
    from zoomfeat.runtime.resources import config_dir

    files = sorted((config_dir() / "model").glob("*.yaml"))
    assert {p.stem for p in files} >= {"tiny", "zoomldm_brca"}
    for path in files:
        section = load_config(mc.ModelSection, yaml.safe_load(path.read_text()), str(path))
        assert section.name == path.stem and section.checkpoint is None
        assert mc.read_config(section.source()) == mc.read_config(path.stem)
    assert mc.ModelSection(name="tiny").source() == "tiny" and mc.ModelSection(name="tiny").is_tiny


def test_model_section_errors():
    from zoomfeat.runtime.config import load_config

    with pytest.raises(ConfigError, match="chekpoint.*checkpoint"):  # the known keys are listed
        load_config(mc.ModelSection, {"name": "tiny", "chekpoint": "x"}, "model")
    _, arch = mc.read_config("tiny")
    bad = {**arch, "unet": {**arch["unet"], "context_dim": 32}}
    with pytest.raises(ConfigError, match="context_dim \\(32\\) must equal"):
        load_config(mc.ModelSection, {"name": "tiny", **bad}, "model")
