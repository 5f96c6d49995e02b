"""VQ-f4 first stage (diffusers VQModel): encode (not quantised), quantise, decode (quantises)."""

from __future__ import annotations

import pytest
import torch

from zoomfeat.model import vq as vq_mod

from .conftest import TOL_VQ_DECODED, TOL_VQ_PREQUANT, max_abs


def test_encode_is_prequant_latent(golden_model, golden_io):
    with torch.no_grad():
        z = golden_model.encode(golden_io["images"])
    assert z.shape == (2, 3, 64, 64)
    assert max_abs(z, golden_io["vq_prequant"]) <= TOL_VQ_PREQUANT
    assert torch.equal(golden_io["z0"], golden_io["vq_prequant"])  # scale_factor 1.0


def test_indices_and_quant_where_no_near_tie(golden_model, golden_io):
    with torch.no_grad():
        quant, idx = golden_model.quantize(golden_io["vq_prequant"])
    clear = golden_io["vq_argmin_gap"] > 1e-4
    assert clear.sum() > 7900  # 239 of 8192 pixels are near-ties
    assert idx.shape == (2, 64, 64) and idx.dtype == torch.int64
    assert torch.equal(idx[clear], golden_io["vq_indices"][clear])
    mask = clear[:, None].expand_as(quant)
    assert max_abs(quant[mask], golden_io["vq_quant"][mask]) < 1e-6
    # the quantised values are codebook vectors
    codes = golden_model.vq.quantize.embedding.weight
    assert torch.allclose(quant.permute(0, 2, 3, 1).reshape(-1, 3), codes[idx.reshape(-1)], atol=1e-6)


def test_decode_quantises(golden_model, golden_io):
    with torch.no_grad():
        img = golden_model.decode(golden_io["vq_quant"][0:1])
        assert img.shape == (1, 3, 256, 256)
        assert max_abs(img, golden_io["vq_decoded"]) <= TOL_VQ_DECODED
        # decode(z) quantises z first: decoding the pre-quant latent = decoding its codes
        z = golden_io["vq_prequant"][0:1]
        q, _ = golden_model.quantize(z)
        assert max_abs(golden_model.decode(z), golden_model.decode(q)) < 1e-4
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
