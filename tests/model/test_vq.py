"""VQ-f4 first stage (diffusers VQModel): encode (not quantised), quantise, decode (quantises)."""

from __future__ import annotations

import pytest
import torch

from zoomfeat.model import vq as vq_mod

from .conftest import VQ_DECODER_DEPTH, VQ_ENCODER_DEPTH, vq_fan_in
from .tolerances import f32_tol, max_abs


def test_encode_is_prequant_latent(golden_model, golden_io):
    with torch.no_grad():
        z = golden_model.encode(golden_io["images"])
    assert z.shape == (2, 3, 64, 64)
    # encoder: n = 4096 (mid attention over 64x64), D = 11 -> 2 * eps32 * 3.3 * sqrt(45056) = 1.7e-4
    # (measured 3.8e-6)
    ref = golden_io["vq_prequant"]
    assert max_abs(z, ref) <= f32_tol(ref, vq_fan_in(golden_model), VQ_ENCODER_DEPTH)
    assert torch.equal(golden_io["z0"], golden_io["vq_prequant"])  # scale_factor 1.0


def test_indices_and_quant_where_no_near_tie(golden_model, golden_io):
    with torch.no_grad():
        quant, idx = golden_model.quantize(golden_io["vq_prequant"])
    clear = golden_io["vq_argmin_gap"] > 1e-4
    assert clear.sum() > 7900  # 239 of 8192 pixels are near-ties
    assert idx.shape == (2, 64, 64) and idx.dtype == torch.int64
    assert torch.equal(idx[clear], golden_io["vq_indices"][clear])
    mask = clear[:, None].expand_as(quant)
    # straight-through z + (e - z): two roundings of numbers <= max|e| -> 2 * eps32 * max|ref|
    ref = golden_io["vq_quant"][mask]
    assert max_abs(quant[mask], ref) <= f32_tol(ref, fan_in=1)
    # the quantised values are codebook vectors
    codes = golden_model.vq.quantize.embedding.weight
    picked = codes[idx.reshape(-1)]
    assert max_abs(quant.permute(0, 2, 3, 1).reshape(-1, 3), picked) <= f32_tol(picked, fan_in=1)


def test_decode_quantises(golden_model, golden_io):
    with torch.no_grad():
        img = golden_model.decode(golden_io["vq_quant"][0:1])
        assert img.shape == (1, 3, 256, 256)
        # decoder: n = 4096 (mid attention), D = 14 -> 2 * eps32 * 3.8 * sqrt(57344) = 2.2e-4
        # (measured 1.6e-5)
        tol = f32_tol(golden_io["vq_decoded"], vq_fan_in(golden_model), VQ_DECODER_DEPTH)
        assert max_abs(img, golden_io["vq_decoded"]) <= tol
        # decode(z) quantises z first: decoding the pre-quant latent = decoding its codes
        z = golden_io["vq_prequant"][0:1]
        q, _ = golden_model.quantize(z)
        # both decode the same codes, up to the straight-through rounding (an input change of a
        # few eps32, carried like the decoder's own rounding): the decoder bound
        ref = golden_model.decode(q)
        tol = f32_tol(ref, vq_fan_in(golden_model), VQ_DECODER_DEPTH)
        assert max_abs(golden_model.decode(z), ref) <= tol
        assert max_abs(golden_model.decode(z, quantize=False), golden_model.decode(q)) > 1e-2


def test_bad_inputs(golden_model):
    with pytest.raises(TypeError, match="uint8"):
        golden_model.encode(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        golden_model.encode(torch.zeros(1, 1, 256, 256))
    with pytest.raises(ValueError, match="multiples of 4"):
        golden_model.encode(torch.zeros(1, 3, 254, 256))
    with pytest.raises(ValueError, match="latent"):
        golden_model.decode(torch.zeros(1, 4, 64, 64))


def test_config_checks():
    with pytest.raises(ValueError, match="double_z"):
        vq_mod.normalize_vq_config({"ddconfig": {"double_z": True}})
    with pytest.raises(ValueError, match="attn_resolutions"):
        vq_mod.normalize_vq_config({"ddconfig": {"attn_resolutions": [32]}})
    with pytest.raises(ValueError, match="unsupported VQ config keys"):
        vq_mod.normalize_vq_config({"embed_dim": 3, "wobble": 1})
    cfg = vq_mod.normalize_vq_config(
        {
            "embed_dim": 3,
            "n_embed": 64,
            "ddconfig": {"ch": 32, "num_res_blocks": 1},
            "lossconfig": {"target": "torch.nn.Identity"},
        }
    )
    assert cfg["ch"] == 32 and cfg["n_embed"] == 64 and vq_mod.downsample_factor(cfg) == 4
    assert vq_mod.diffusers_config(cfg)["scaling_factor"] == 1.0
