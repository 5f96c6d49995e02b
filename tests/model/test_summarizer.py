"""The SSL summarizer: official preprocessing, token layout and contexts for mags 0/1/2/4."""

from __future__ import annotations

import pytest
import torch

from zoomfeat.model.summarizer import Summarizer, prepare_ssl_grid

from .conftest import summarizer_depth, summarizer_fan_in
from .tolerances import f32_tol, max_abs


def cond_tol(model, ref: torch.Tensor) -> float:
    """The summarizer's bound: n = 128 (MLP), D = 6 -> 2 * eps32 * max|ref| * sqrt(768) ≈ 6.6e-6 *
    max|ref| (max|ref| 3.8 -> 2.5e-5; measured 1.4e-6, fused vs unfused attention 1.7e-6)."""
    return f32_tol(ref, summarizer_fan_in(model), summarizer_depth(model))


MAGS = (0, 1, 2, 4)


@pytest.mark.parametrize("k", MAGS)
def test_prepare_grid_bitwise(golden_io, k):
    x = prepare_ssl_grid(golden_io[f"ssl_raw_mag{k}"])
    assert torch.equal(x, golden_io[f"ssl_in_mag{k}"])


@pytest.mark.parametrize("k", MAGS)
def test_token_layout(golden_model, golden_io, k):
    with torch.no_grad():
        tok = golden_model.summarizer.tokens(golden_io[f"ssl_in_mag{k}"], golden_io[f"mag_mag{k}"])
    assert tok.shape == (2, 65, 64)
    # dim_reduce only (Linear 32 -> 64): n = 32, D = 1; pad and mag tokens are copied exactly
    ref = golden_io[f"summ_tokens_mag{k}"]
    assert max_abs(tok, ref) <= f32_tol(ref, golden_model.summarizer.dim_reduce.in_features)


def test_token_slots(golden_model):
    """Grid tokens sit centred among the 64 slots; every other slot is the pad token."""
    s = golden_model.summarizer
    pad = s.pad_token[0, 0]
    with torch.no_grad():
        for side, first in ((1, 32), (2, 30), (4, 24), (8, 0)):
            n = side * side
            tok = s.tokens(torch.randn(1, 32, side, side), 3)[0]
            assert torch.equal(tok[0], s.mag_embedding.weight[3])
            slots = tok[1:]
            is_pad = torch.tensor([torch.equal(slots[i], pad) for i in range(64)])
            expect = torch.ones(64, dtype=torch.bool)
            expect[first : first + n] = False
            assert torch.equal(is_pad, expect), side


@pytest.mark.parametrize("k", MAGS)
def test_context_matches_official(golden_model, golden_io, k):
    """ZoomLDM.condition takes the RAW grid (float16 here), pools/standardises inside."""
    with torch.no_grad():
        c = golden_model.condition(golden_io[f"ssl_raw_mag{k}"], golden_io[f"mag_mag{k}"])
    assert c.shape == (2, 65, 64) and c.dtype == torch.float32
    assert max_abs(c, golden_io[f"cond_mag{k}"]) <= cond_tol(golden_model, golden_io[f"cond_mag{k}"])


def test_context_unfused_path_and_int_mag(golden_model, golden_io):
    """With grad enabled nn.MultiheadAttention takes its unfused path: still within tolerance."""
    c = golden_model.condition(golden_io["ssl_raw_mag2"], 2)
    assert c.requires_grad
    assert max_abs(c, golden_io["cond_mag2"]) <= cond_tol(golden_model, golden_io["cond_mag2"])


def test_cond_unet_assembly(golden_model, golden_io):
    with torch.no_grad():
        c0 = golden_model.condition(golden_io["ssl_raw_mag0"][:1], 0)
        c4 = golden_model.condition(golden_io["ssl_raw_mag4"][1:], 4)
    assert max_abs(torch.cat([c0, c4]), golden_io["cond_unet"]) <= cond_tol(
        golden_model, golden_io["cond_unet"]
    )


def test_2d_grid_is_a_1x1_grid(golden_model, golden_io):
    raw = golden_io["ssl_raw_mag0"]
    with torch.no_grad():
        assert torch.equal(golden_model.condition(raw[:, :, 0, 0], 0), golden_model.condition(raw, 0))


def test_bad_inputs(golden_model):
    g = torch.randn(2, 32, 2, 2)
    with pytest.raises(ValueError, match="magnification index out of range.*8"):
        golden_model.condition(g, 8)
    with pytest.raises(ValueError, match="out of range"):
        golden_model.condition(g, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="2 magnification indices for a batch of 3"):
        golden_model.condition(torch.randn(3, 32, 1, 1), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        golden_model.condition(g, 1.5)
    with pytest.raises(ValueError, match="1024 channels but this model expects 32"):
        golden_model.condition(torch.randn(2, 1024, 4, 4), 2)
    with pytest.raises(ValueError, match="larger than 8x8"):
        golden_model.summarizer(torch.randn(1, 32, 16, 16), 4)


def test_config_checks():
    with pytest.raises(ValueError, match="must equal hidden_channels"):
        Summarizer(input_channels=8, hidden_channels=64, output_channels=32, num_layers=1, vit_mlp_dim=16)
    s = Summarizer(input_channels=8, hidden_channels=64, output_channels=64, num_layers=1, vit_mlp_dim=16)
    names = set(s.state_dict())
    assert {
        "pad_token",
        "mag_embedding.weight",
        "encoder.pos_embedding",
        "encoder.ln.weight",
        "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
        "encoder.layers.encoder_layer_0.mlp.3.bias",
        "final_proj.weight",
        "layer_norm.bias",
    } <= names
