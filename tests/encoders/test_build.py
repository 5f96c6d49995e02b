"""zoomfeat.encoders.build: weights messages (gated hub, offline, CTransPath's file), output rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from zoomfeat.encoders import ENCODERS, build_encoder, get_spec
from zoomfeat.encoders.build import build_registry_encoder
from zoomfeat.runtime.errors import WeightsNotFoundError

from .conftest import tiles

GATED = [name for name, spec in ENCODERS.items() if spec.gated and name != "uni"]


@pytest.mark.parametrize("name", GATED)
def test_gated_encoder_without_token_offline_says_licence_token_and_local_path(monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine is offline; never try the network
    spec = get_spec(name)
    with pytest.raises(WeightsNotFoundError) as err:
        build_encoder(name)
    msg = str(err.value)
    for needle in (spec.hub_id, "gated", "HF_TOKEN", f"Licence: {spec.licence}", "checkpoint=/path/to/"):
        assert needle in msg, (needle, msg)
    assert spec.weight_files[0] in msg and "allow_random_weights=true" in msg


def test_open_hub_encoder_offline_says_where_to_put_the_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        build_encoder("phikon")
    msg = str(err.value)
    assert "owkin/phikon" in msg and "HF_HUB_OFFLINE is set" in msg and "pytorch_model.bin" in msg
    assert "Licence" not in msg  # not gated


def test_ctranspath_without_a_path_names_the_published_file(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        build_encoder("ctranspath")
    msg = str(err.value)
    for needle in ("not on a model hub", "ctranspath.pth", "github.com/Xiyue-Wang/TransPath", "checkpoint="):
        assert needle in msg
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_encoder("ctranspath", checkpoint=str(tmp_path / "ctranspath.pth"))


def test_virchow2_output_is_class_token_and_mean_of_patch_tokens():
    spec = get_spec("virchow2")
    small = dataclasses.replace(
        spec, timm_kwargs={**spec.timm_kwargs, "embed_dim": 32, "depth": 1, "num_heads": 2}, embed_dim=64
    )
    with pytest.warns(UserWarning, match="RANDOM weights"):
        enc = build_registry_encoder(small, allow_random_weights=True).eval()
    x = enc.preprocess(tiles(2))
    tokens = enc.vit.forward_features(x)  # (B, 1 + 4 registers + 256 patches, 32), normed
    assert tokens.shape == (2, 1 + 4 + 16 * 16, 32)
    want = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
    assert torch.equal(enc(x), want) and enc.embed_dim == 64


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    spec = get_spec("phikon")
    small = dataclasses.replace(
        spec, timm_kwargs={**spec.timm_kwargs, "embed_dim": 32, "depth": 1, "num_heads": 2}
    )
    torch.manual_seed(5)
    a = torch.rand(2)
    torch.manual_seed(5)
    with pytest.warns(UserWarning):
        one = build_registry_encoder(small, allow_random_weights=True, seed=1)
        two = build_registry_encoder(small, allow_random_weights=True, seed=1)
    assert torch.equal(torch.rand(2), a)
    assert one.checkpoint_id == "random-init(seed=1)"
    assert all(
        torch.equal(p, q) for p, q in zip(one.state_dict().values(), two.state_dict().values(), strict=True)
    )
