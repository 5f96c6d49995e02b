"""zoomfeat.features.config: conf/extract.yaml is ExtractConfig; the recipe (config hash) is pinned."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from zoomfeat.features.config import ExtractConfig, FeaturesSection
from zoomfeat.runtime.config import iter_keys, load_config
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.provenance import config_hash
from zoomfeat.runtime.resources import config_dir

#: recipes and hashes of the flat ExtractConfig of earlier versions (pinned: every existing bag
#: stores such a hash, and a changed recipe would make all of them look foreign)
OLD_DEFAULT = ('{"encoder":"uni","encoder_checkpoint":null,"ensemble":1,"mag":20.0,"min_tissue":0.25,'
               '"model":"zoomldm_brca","model_checkpoint":null,"mpp":null,"parent_mag":5.0,"precision":"fp32",'
               '"seed":0,"taps":["middle_block","output_blocks.4"],"tile_px":256,"timestep":200}')  # fmt: skip
OLD_CUSTOM = ('{"encoder":"tiny","encoder_checkpoint":null,"ensemble":1,"mag":20.0,"min_tissue":0.5,'
              '"model":"tiny","model_checkpoint":"/x/y","mpp":0.25,"parent_mag":5.0,"precision":"bf16","seed":0,'
              '"taps":["middle_block"],"tile_px":256,"timestep":300}')  # fmt: skip


def test_recipe_is_the_earlier_one_plus_the_integer_lattice():
    """Issue 10's integer tile lattice adds ``lattice`` to the recipe: the hash of the earlier
    versions' bags no longer matches, so they are refused (re-extracted), as for any changed setting."""
    new_default = json.loads(OLD_DEFAULT) | {"lattice": "integer"}
    assert ExtractConfig().recipe() == new_default
    assert config_hash(ExtractConfig().recipe()) == "ea2061e40f56cb90" != "0fc44a1070e3b52b"
    custom = ExtractConfig.from_kwargs(
        model="tiny", encoder="tiny", mpp=0.25, precision="bf16",
        **{"tissue.min_tissue": 0.5, "features.taps": ["middle_block"], "features.timestep": 300,
           "model.checkpoint": "/x/y"},
    )  # fmt: skip
    assert custom.recipe() == json.loads(OLD_CUSTOM) | {"lattice": "integer"}
    assert config_hash(custom.recipe()) == "271700e55f9b9f36" != "8d5b209aa892a621"
    assert ExtractConfig(trident_compat=True).recipe()["lattice"] == "trident"


def test_the_yaml_is_the_dataclass():
    """Every key of conf/extract.yaml (with its default groups) is a field, with the same default."""
    from hydra import compose, initialize_config_dir

    import zoomfeat.extract  # noqa: F401 - registers the out_dir resolver

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        composed = compose("extract")
    data = OmegaConf.to_container(composed, resolve=True)
    cfg = load_config(ExtractConfig, data, "extract")
    yaml_keys = {k for k, _ in iter_keys(ExtractConfig)}
    for key in yaml_keys - {"model.unet", "model.vq", "model.summarizer", "model.diffusion"}:
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        assert leaf in node, f"{key} is a field but not in conf/extract.yaml"
    assert cfg.recipe() == ExtractConfig().recipe()
    assert cfg.model.unet["model_channels"] == 192  # the group file became the model section


def test_unknown_keys_and_bad_values_are_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"unknown setting 'timestp'.*known keys: model, encoder"):
        ExtractConfig.from_kwargs(timestp=3)
    with pytest.raises(ConfigError, match=r"unknown setting 'features.timestp'.*under features: timestep"):
        ExtractConfig.from_kwargs(**{"features.timestp": 3})
    with pytest.raises(ConfigError, match=r"unknown setting 'features.timestp'"):
        load_config(ExtractConfig, {"features": {"timestp": 3}}, "extract")
    with pytest.raises(ConfigError, match="precision"):
        ExtractConfig.from_kwargs(precision="fp8")
    with pytest.raises(ConfigError, match="features.timestep"):
        ExtractConfig.from_kwargs(**{"features.timestep": 1000})
    with pytest.raises(ConfigError, match="duplicates"):
        FeaturesSection(taps=["middle_block", "middle_block"])
    with pytest.raises(ConfigError, match="num_workers"):
        ExtractConfig.from_kwargs(num_workers="many")
    with pytest.raises(ConfigError, match="shard.index"):
        ExtractConfig.from_kwargs(**{"shard.index": 2, "shard.count": 2})


def test_python_api_takes_the_command_line_names():
    cfg = ExtractConfig.from_kwargs(
        model="tiny", encoder="tiny", **{"features.timestep": "300"}, num_workers="2"
    )
    assert cfg.model.name == "tiny" and cfg.model.unet["model_channels"] == 32  # conf/model/tiny.yaml
    assert cfg.features.timestep == 300 and cfg.num_workers == 2
    assert ExtractConfig.from_kwargs(features={"ensemble": 2}).features.timestep == 200
    # a group choice applies first, single keys on top of it, whatever the order
    cfg = ExtractConfig.from_kwargs(**{"model.checkpoint": "w.ckpt"}, model="tiny")
    assert cfg.model.checkpoint == "w.ckpt" and cfg.model.name == "tiny"
    again = cfg.replace(seed=3)
    assert again.seed == 3 and again.model.checkpoint == "w.ckpt" and cfg.seed == 0
    assert ExtractConfig(features=FeaturesSection(timestep=300)).recipe()["timestep"] == 300
    assert ExtractConfig().workers_for("cpu") == 0 and cfg.replace(num_workers=3).workers_for("cuda") == 3
