"""zoomfeat.encoders.config: conf/encoder/*.yaml is EncoderSection."""

from __future__ import annotations

import pytest
import yaml

from zoomfeat.encoders.config import EMBED_DIM, ENCODERS, EncoderSection
from zoomfeat.runtime.config import load_config
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.resources import config_dir


def test_every_encoder_group_file_is_an_encoder_section():
    files = sorted((config_dir() / "encoder").glob("*.yaml"))
    assert sorted(p.stem for p in files) == sorted(ENCODERS) == sorted(EMBED_DIM)
    for path in files:
        section = load_config(EncoderSection, yaml.safe_load(path.read_text()), str(path))
        assert section.name == path.stem and section.checkpoint is None
        assert section.embed_dim == EMBED_DIM[path.stem]
    assert EncoderSection(name="tiny").is_tiny and not EncoderSection().is_tiny


def test_encoder_section_errors():
    with pytest.raises(ConfigError, match="encoder='vit' is not an encoder: use one of uni, tiny"):
        EncoderSection(name="vit")
    with pytest.raises(ConfigError, match="checkpont"):
        load_config(EncoderSection, {"name": "uni", "checkpont": "x"}, "encoder")
