"""zoomfeat.encoders: build_encoder by name."""

from __future__ import annotations

import pytest

from zoomfeat.encoders import build_encoder
from zoomfeat.runtime.errors import ConfigError


def test_unknown_encoder_name():
    with pytest.raises(ConfigError, match="unknown encoder 'vit'"):
        build_encoder("vit")
