"""zoomfeat.encoders.uni: the gated hub repo's advice, the full-size architecture."""

from __future__ import annotations

import pytest
import torch

from zoomfeat.encoders import build_encoder
from zoomfeat.runtime.errors import WeightsNotFoundError

from .conftest import tiles


def test_uni_without_weights_says_how_to_get_them(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine is offline; never try the network
    with pytest.raises(WeightsNotFoundError) as err:
        build_encoder("uni")
    msg = str(err.value)
    for needle in ("MahmoodLab/UNI", "gated", "HF_TOKEN", "encoder.checkpoint=", "allow_random_weights=true"):
        assert needle in msg


@pytest.mark.slow
def test_uni_architecture_random_and_from_local_file(tmp_path):
    """Full-size UNI: seeded random init (flag), saved and loaded back as a local safetensors file."""
    from safetensors.torch import save_file

    with pytest.warns(UserWarning, match="RANDOM weights"):
        uni = build_encoder("uni", allow_random_weights=True)
    assert uni.embed_dim == 1024
    assert sum(p.numel() for p in uni.parameters()) == 303_350_784  # ViT-L/16 without head
    blocks = uni.vit.blocks
    assert len(blocks) == 24 and torch.allclose(blocks[0].ls1.gamma, torch.full((1024,), 1e-5))  # init_values
    x = uni.preprocess(tiles(1))
    y = uni(x)
    assert y.shape == (1, 1024)
    path = tmp_path / "uni.safetensors"
    save_file({k: v.contiguous() for k, v in uni.vit.state_dict().items()}, str(path))
    loaded = build_encoder("uni", checkpoint=str(path))
    assert loaded.checkpoint_id == str(path)
    assert torch.equal(loaded(x), y)
    # dynamic_img_size: a 256 px input runs too (UNI may be fed unresized tiles)
    assert loaded(torch.zeros(1, 3, 256, 256)).shape == (1, 1024)
