"""zoomfeat.encoders.config: conf/encoder/*.yaml is EncoderSection; TileEncoderSection takes any registry name."""

from __future__ import annotations

import pytest
import yaml

from zoomfeat.encoders.config import (
    CONDITIONING_ENCODERS,
    EMBED_DIM,
    ENCODERS,
    EncoderSection,
    TileEncoderSection,
)
from zoomfeat.runtime.config import load_config
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.resources import config_dir


def test_every_encoder_group_file_is_an_encoder_section():
    files = sorted((config_dir() / "encoder").glob("*.yaml"))
    assert sorted(p.stem for p in files) == sorted(CONDITIONING_ENCODERS)
    assert sorted(ENCODERS) == sorted(EMBED_DIM)
    for path in files:
        section = load_config(EncoderSection, yaml.safe_load(path.read_text()), str(path))
        assert section.name == path.stem and section.checkpoint is None
        assert section.embed_dim == EMBED_DIM[path.stem]
    assert EncoderSection(name="tiny").is_tiny and not EncoderSection().is_tiny


def test_encoder_section_errors():
    with pytest.raises(
        ConfigError, match="encoder='vit' is not an encoder: use one of uni, dinov2_vitl14_reg, tiny"
    ):
        EncoderSection(name="vit")
    # a registry encoder cannot condition ZoomLDM (phikon_v2 is 1024-d like UNI: no width check catches it)
    with pytest.raises(ConfigError, match=r"'phikon_v2' is a baseline encoder: list it in encoders=\[...\]"):
        EncoderSection(name="phikon_v2")
    with pytest.raises(ConfigError, match="checkpont"):
        load_config(EncoderSection, {"name": "uni", "checkpont": "x"}, "encoder")


def test_tile_encoder_section_takes_any_registry_name():
    for name in ENCODERS:
        assert TileEncoderSection(name=name).embed_dim == EMBED_DIM[name]
    entry = load_config(
        TileEncoderSection, {"name": "ctranspath", "checkpoint": "/w/ctranspath.pth"}, "encoders[0]"
    )
    assert entry.checkpoint == "/w/ctranspath.pth"
    with pytest.raises(ConfigError, match="'virchow' is not an encoder: use any of phikon, phikon_v2"):
        TileEncoderSection(name="virchow")
