"""zoomfeat.encoders.registry: every encoder at full size on the meta device (no memory, no download).

Parameter counts are checked against the published figure named in each row's ``params_source``
(a figure like "632M" or "1.1B" admits every count that rounds to it); widths and GFLOPs per tile
against the row. The preprocessing table below is written from the published transforms
(TRIDENT ``patch_encoder_models/load.py`` and the model cards), independently of the registry.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zoomfeat.encoders import ENCODERS, build_encoder, get_spec
from zoomfeat.encoders.build import build_architecture, wrap
from zoomfeat.encoders.registry import OUTPUTS, published_range
from zoomfeat.runtime.errors import ConfigError

from .conftest import tiles

#: full-size architectures on meta, built once per session (forwards on meta change nothing)
meta_build = functools.cache(lambda name: build_architecture(name, "meta"))

IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPT = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

#: name: (input px, resize px, interpolation, (mean, std), output width) as published
PUBLISHED_PREPROCESSING = {
    "phikon": (224, 224, "bilinear", IMNET, 768),  # Resize((224, 224)) bilinear
    "phikon_v2": (224, 224, "bilinear", IMNET, 1024),  # Resize(224) + CenterCrop(224)
    "ctranspath": (224, 224, "bilinear", IMNET, 768),  # Resize((224, 224)) bilinear
    "uni": (224, 224, "bilinear", IMNET, 1024),  # Resize(224) + CenterCrop(224)
    "uni2_h": (224, 224, "bilinear", IMNET, 1536),  # Resize(224) + CenterCrop(224)
    "virchow2": (224, 224, "bicubic", IMNET, 2560),  # Resize(224, BICUBIC); cls + mean patch
    "h_optimus_0": (224, 224, "bilinear", HOPT, 1536),  # Resize(224), bioptimus stats
    "h_optimus_1": (224, 224, "bilinear", HOPT, 1536),
    "gigapath": (224, 256, "bicubic", IMNET, 1536),  # Resize(256, BICUBIC) + CenterCrop(224)
    "conch_v15": (448, 448, "bilinear", IMNET, 768),  # Resize(448) + CenterCrop(448); pooler 768
    "dinov2_vitl14_reg": (224, 256, "bicubic", IMNET, 1024),  # Resize(256, BICUBIC) + CenterCrop(224)
    "kaiko_vits16": (224, 224, "bilinear", ((0.5,) * 3, (0.5,) * 3), 384),  # Resize(224) + CenterCrop(224)
    "tiny": (224, 224, "bilinear", IMNET, 32),
}


def test_preprocessing_constants_are_the_published_ones():
    assert sorted(PUBLISHED_PREPROCESSING) == sorted(ENCODERS)
    for name, (px, resize, interp, (mean, std), width) in PUBLISHED_PREPROCESSING.items():
        spec = ENCODERS[name]
        got = (spec.input_px, spec.resize_px, spec.interpolation, spec.mean, spec.std, spec.embed_dim)
        assert got == (px, resize, interp, mean, std, width), name
        assert spec.output in OUTPUTS and spec.params_source and spec.licence
        assert spec.trident_precision in ("fp32", "fp16", "bf16")
        assert spec.gated == (spec.hub_id is not None and "gated" in spec.licence), name


@pytest.mark.parametrize("name", list(ENCODERS))
def test_full_size_build_on_meta_params_width_gflops(name):
    spec = get_spec(name)
    vit, pool = meta_build(name)
    n = sum(p.numel() for p in vit.parameters()) + (sum(p.numel() for p in pool.parameters()) if pool else 0)
    low, high = spec.params_bounds
    assert low <= n <= high, (
        f"{name}: {n:,} parameters, published {spec.published_params} ({spec.params_source})"
    )
    enc = wrap(spec, vit, pool)
    x = torch.empty(1, 3, spec.input_px, spec.input_px, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        y = enc(x)
    assert y.shape == (1, spec.embed_dim) and enc.embed_dim == spec.embed_dim
    # the recorded GFLOPs per tile (FlopCounterMode: 2 FLOPs per multiply-add) are the counted ones
    assert fc.get_total_flops() / 1e9 == pytest.approx(spec.gflops, rel=5e-3, abs=0.01)


def test_architecture_details():
    """The details the kwargs must produce: registers, SwiGLU widths, patch sizes, pos-embed grids."""
    v2, pool = meta_build("virchow2")
    assert v2.num_prefix_tokens == 5 and pool.num_prefix_tokens == 5  # class + 4 registers excluded
    assert v2.blocks[0].mlp.fc1.out_features == 6832 and v2.blocks[0].mlp.fc2.in_features == 3416
    u2, _ = meta_build("uni2_h")
    assert u2.num_prefix_tokens == 9 and len(u2.blocks) == 24 and u2.patch_embed.patch_size == (14, 14)
    giga, _ = meta_build("gigapath")
    assert giga.patch_embed.patch_size == (16, 16) and len(giga.blocks) == 40
    assert giga.blocks[0].mlp.fc2.in_features == 4096  # SwiGLUPacked from the dinov2 base definition
    h0, _ = meta_build("h_optimus_0")
    assert h0.num_prefix_tokens == 5 and h0.pos_embed.shape == (1, 256, 1536)  # no_embed_class
    conch, cpool = meta_build("conch_v15")
    assert conch.pos_embed.shape == (1, 1 + 28 * 28, 1024) and cpool.attn.query.shape == (1, 768)
    phikon, _ = meta_build("phikon")
    assert phikon.norm.eps == 1e-12 and phikon.blocks[0].norm1.eps == 1e-12  # owkin/phikon config.json
    ctp, _ = meta_build("ctranspath")
    assert [type(m).__name__ for m in ctp.patch_embed.proj] == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d",
    ]  # fmt: skip


def test_preprocess_resize_crop_and_interpolation():
    t = tiles(2, 256)
    giga = wrap(get_spec("gigapath"), *build_architecture("tiny", "meta"))
    giga_x = giga.preprocess(t)  # 256 px: Resize(256) is a no-op, then the centre 224 crop
    mean, std = torch.tensor(IMNET[0]).view(1, 3, 1, 1), torch.tensor(IMNET[1]).view(1, 3, 1, 1)
    want = (t.permute(0, 3, 1, 2).float() / 255.0)[..., 16:240, 16:240]
    assert torch.allclose(giga_x, (want - mean) / std, rtol=0, atol=1e-6)
    conch = wrap(get_spec("conch_v15"), *build_architecture("tiny", "meta"))
    assert conch.preprocess(t).shape == (2, 3, 448, 448)
    v2 = wrap(get_spec("virchow2"), *build_architecture("tiny", "meta"))
    x = v2.preprocess(torch.full((1, 256, 256, 3), 255, dtype=torch.uint8))
    # bicubic overshoot is clamped as PIL's uint8 output is: a white tile stays exactly white
    assert torch.allclose(x, (1 - mean) / std, rtol=0, atol=1e-5)
    # a non-square tile: shorter side resized, then centre-cropped (transforms.Resize(int) + CenterCrop)
    assert v2.preprocess(tiles(1, 256)[:, :, :200]).shape == (1, 3, 224, 224)


def test_published_range_and_unknown_names():
    assert published_range("632M") == (631_500_000, 632_500_000)
    assert published_range("1.1B") == (1_050_000_000, 1_150_000_000)
    with pytest.raises(ValueError, match="not like"):
        published_range("about 600M")
    with pytest.raises(
        ConfigError, match="unknown encoder 'virchow': use one of phikon, phikon_v2, ctranspath"
    ):
        build_encoder("virchow")
