"""zoomfeat.encoders.convert: published key layouts -> timm, at full size (meta) and through files.

The published layouts are written out here from their own sources (transformers' ViTModel /
Dinov2Model naming and the configs of owkin/phikon and owkin/phikon-v2; TransPath's timm 0.5.4
Swin; TITAN's CONCH v1.5 vision tower), independently of the converters: full-size key lists with
meta tensors must convert to exactly the keys and shapes zoomfeat builds; reduced-size checkpoints
with real values, saved as files, must load back and give the source model's outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import pytest
import torch

from zoomfeat.encoders import get_spec
from zoomfeat.encoders.build import build_architecture, build_registry_encoder, expected_state
from zoomfeat.encoders.convert import convert, dino_resample_pos_embed
from zoomfeat.runtime.errors import WeightsError
from zoomfeat.runtime.weights import key_mismatch_lines

from .conftest import tiles

meta_build = functools.cache(lambda name: build_architecture(name, "meta"))


def meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def hf_vit_layout(d=768, layers=12, inter=3072, patch=16, img=224) -> dict[str, tuple[int, ...]]:
    """transformers ViTModel state-dict names and shapes (with the pooler Phikon's file carries)."""
    n = (img // patch) ** 2
    out = {
        "embeddings.cls_token": (1, 1, d),
        "embeddings.position_embeddings": (1, n + 1, d),
        "embeddings.patch_embeddings.projection.weight": (d, 3, patch, patch),
        "embeddings.patch_embeddings.projection.bias": (d,),
        "layernorm.weight": (d,),
        "layernorm.bias": (d,),
        "pooler.dense.weight": (d, d),
        "pooler.dense.bias": (d,),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            out[f"{p}attention.attention.{name}.weight"] = (d, d)
            out[f"{p}attention.attention.{name}.bias"] = (d,)
        out |= {
            f"{p}attention.output.dense.weight": (d, d),
            f"{p}attention.output.dense.bias": (d,),
            f"{p}layernorm_before.weight": (d,),
            f"{p}layernorm_before.bias": (d,),
            f"{p}layernorm_after.weight": (d,),
            f"{p}layernorm_after.bias": (d,),
            f"{p}intermediate.dense.weight": (inter, d),
            f"{p}intermediate.dense.bias": (inter,),
            f"{p}output.dense.weight": (d, inter),
            f"{p}output.dense.bias": (d,),
        }
    return out


def hf_dinov2_layout(d=1024, layers=24, inter=4096, patch=16, img=224) -> dict[str, tuple[int, ...]]:
    """transformers Dinov2Model names and shapes (mask_token, layer_scale, norm1/2, mlp.fc1/2)."""
    n = (img // patch) ** 2
    out = {
        "embeddings.cls_token": (1, 1, d),
        "embeddings.mask_token": (1, d),
        "embeddings.position_embeddings": (1, n + 1, d),
        "embeddings.patch_embeddings.projection.weight": (d, 3, patch, patch),
        "embeddings.patch_embeddings.projection.bias": (d,),
        "layernorm.weight": (d,),
        "layernorm.bias": (d,),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            out[f"{p}attention.attention.{name}.weight"] = (d, d)
            out[f"{p}attention.attention.{name}.bias"] = (d,)
        out |= {
            f"{p}norm1.weight": (d,),
            f"{p}norm1.bias": (d,),
            f"{p}attention.output.dense.weight": (d, d),
            f"{p}attention.output.dense.bias": (d,),
            f"{p}layer_scale1.lambda1": (d,),
            f"{p}norm2.weight": (d,),
            f"{p}norm2.bias": (d,),
            f"{p}mlp.fc1.weight": (inter, d),
            f"{p}mlp.fc1.bias": (inter,),
            f"{p}mlp.fc2.weight": (d, inter),
            f"{p}mlp.fc2.bias": (d,),
            f"{p}layer_scale2.lambda1": (d,),
        }
    return out


def transpath_layout(c=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7, img=224):
    """TransPath ctranspath.pth names and shapes (timm 0.5.4 Swin-T + conv stem, head removed)."""
    out = {
        "patch_embed.proj.0.weight": (c // 8, 3, 3, 3),
        "patch_embed.proj.3.weight": (c // 4, c // 8, 3, 3),
        "patch_embed.proj.6.weight": (c, c // 4, 1, 1),
        "patch_embed.proj.6.bias": (c,),
        "patch_embed.norm.weight": (c,),
        "patch_embed.norm.bias": (c,),
        "norm.weight": (c * 8,),
        "norm.bias": (c * 8,),
    }
    for idx, w in (("1", c // 8), ("4", c // 4)):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            out[f"patch_embed.proj.{idx}.{leaf}"] = (w,)
        out[f"patch_embed.proj.{idx}.num_batches_tracked"] = ()
    res = img // 4
    for s, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        dim = c * 2**s
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}."
            out |= {
                f"{p}norm1.weight": (dim,),
                f"{p}norm1.bias": (dim,),
                f"{p}attn.relative_position_bias_table": ((2 * window - 1) ** 2, h),
                f"{p}attn.relative_position_index": (window**2, window**2),
                f"{p}attn.qkv.weight": (3 * dim, dim),
                f"{p}attn.qkv.bias": (3 * dim,),
                f"{p}attn.proj.weight": (dim, dim),
                f"{p}attn.proj.bias": (dim,),
                f"{p}norm2.weight": (dim,),
                f"{p}norm2.bias": (dim,),
                f"{p}mlp.fc1.weight": (4 * dim, dim),
                f"{p}mlp.fc1.bias": (4 * dim,),
                f"{p}mlp.fc2.weight": (dim, 4 * dim),
                f"{p}mlp.fc2.bias": (dim,),
            }
            if b % 2 and res > window:  # shifted windows carry their mask as a buffer
                out[f"{p}attn_mask"] = ((res // window) ** 2, window**2, window**2)
        if s < len(depths) - 1:  # timm 0.5.4: patch merging at the END of stages 0-2
            out[f"layers.{s}.downsample.reduction.weight"] = (2 * dim, 4 * dim)
            out[f"layers.{s}.downsample.norm.weight"] = (4 * dim,)
            out[f"layers.{s}.downsample.norm.bias"] = (4 * dim,)
            res //= 2
    return out


def conch_layout(d=1024, layers=24, pos_tokens=197) -> dict[str, tuple[int, ...]]:
    """TITAN's pytorch_model_vision.bin: trunk.* (iBOT/timm ViT-L/16, LayerScale) + pooler + LayerNorm."""
    out = {
        "trunk.cls_token": (1, 1, d),
        "trunk.pos_embed": (1, pos_tokens, d),
        "trunk.patch_embed.proj.weight": (d, 3, 16, 16),
        "trunk.patch_embed.proj.bias": (d,),
        "trunk.norm.weight": (d,),
        "trunk.norm.bias": (d,),
        "attn_pool_contrast.query": (1, 768),
        "attn_pool_contrast.ln_k.weight": (d,),
        "attn_pool_contrast.ln_k.bias": (d,),
        "attn_pool_contrast.ln_q.weight": (768,),
        "attn_pool_contrast.ln_q.bias": (768,),
        "attn_pool_contrast.to_q.weight": (768, 768),
        "attn_pool_contrast.to_kv.weight": (1536, d),
        "attn_pool_contrast.to_out.weight": (768, 768),
        "ln_contrast.weight": (768,),
        "ln_contrast.bias": (768,),
    }
    for i in range(layers):
        p = f"trunk.blocks.{i}."
        out |= {
            f"{p}norm1.weight": (d,),
            f"{p}norm1.bias": (d,),
            f"{p}attn.qkv.weight": (3 * d, d),
            f"{p}attn.qkv.bias": (3 * d,),
            f"{p}attn.proj.weight": (d, d),
            f"{p}attn.proj.bias": (d,),
            f"{p}ls1.gamma": (d,),
            f"{p}norm2.weight": (d,),
            f"{p}norm2.bias": (d,),
            f"{p}mlp.fc1.weight": (4 * d, d),
            f"{p}mlp.fc1.bias": (4 * d,),
            f"{p}mlp.fc2.weight": (d, 4 * d),
            f"{p}mlp.fc2.bias": (d,),
            f"{p}ls2.gamma": (d,),
        }
    return out


FULL_SIZE_LAYOUTS = {
    "phikon": hf_vit_layout,
    "phikon_v2": hf_dinov2_layout,
    "ctranspath": transpath_layout,
    "conch_v15": conch_layout,
}


@pytest.mark.parametrize("name", list(FULL_SIZE_LAYOUTS))
def test_full_size_published_layout_converts_to_exactly_the_built_keys(name):
    spec = get_spec(name)
    converted = convert(spec.converter, meta(FULL_SIZE_LAYOUTS[name]()))
    assert key_mismatch_lines(converted, expected_state(*meta_build(name))) == []


def test_timm_layout_encoders_need_no_converter():
    for name in ("uni", "uni2_h", "virchow2", "h_optimus_0", "h_optimus_1", "gigapath"):
        assert get_spec(name).converter is None, name


# ------------------------------------------------------------------------------------------------
# reduced-size variants, real values, real files


def small(name: str, **kwargs) -> object:
    spec = get_spec(name)
    width = kwargs.get("embed_dim", spec.embed_dim) * (
        8 if name == "ctranspath" else 1
    )  # Swin: 8 x stem width
    return dataclasses.replace(spec, timm_kwargs={**spec.timm_kwargs, **kwargs}, embed_dim=width)


def random_source(spec, seed=3):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return build_registry_encoder(spec, allow_random_weights=True, seed=seed).eval()


def timm_to_hf(state: dict[str, torch.Tensor], dinov2: bool) -> dict[str, torch.Tensor]:
    """Write a timm ViT state dict in transformers' naming (the inverse direction, for the test)."""
    top = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    blk = (
        {"norm1": "norm1", "attn.proj": "attention.output.dense", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
         "mlp.fc2": "mlp.fc2", "ls1": "layer_scale1", "ls2": "layer_scale2"}
        if dinov2
        else {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    )  # fmt: skip
    out = {}
    for k, v in state.items():
        if k in top:
            out[top[k]] = v.clone()
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", k)
        i, stem, leaf = m[1], m[2], m[3]
        p = f"encoder.layer.{i}."
        if stem == "attn.qkv":
            for name, part in zip(("query", "key", "value"), v.chunk(3, 0), strict=True):
                out[f"{p}attention.attention.{name}.{leaf}"] = part.clone()
        elif leaf == "gamma":
            out[f"{p}{blk[stem]}.lambda1"] = v.clone()
        else:
            out[f"{p}{blk[stem]}.{leaf}"] = v.clone()
    return out


@pytest.mark.parametrize("name", ["phikon", "phikon_v2"])
def test_hf_checkpoint_file_loads_back(tmp_path, name):
    spec = small(name, embed_dim=32, depth=2, num_heads=2)
    src = random_source(spec)
    hf = timm_to_hf(dict(src.vit.state_dict()), dinov2=name == "phikon_v2")
    if name == "phikon":
        hf |= {"pooler.dense.weight": torch.randn(32, 32), "pooler.dense.bias": torch.randn(32)}
        torch.save(hf, tmp_path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        hf["embeddings.mask_token"] = torch.zeros(1, 32)
        save_file(hf, str(tmp_path / "model.safetensors"))
    enc = build_registry_encoder(spec, checkpoint=str(tmp_path)).eval()
    x = src.preprocess(tiles(2))
    assert torch.equal(enc(x), src(x)) and enc(x).shape == (2, 32)
    assert enc.checkpoint_id.startswith(str(tmp_path)) and len(enc.checkpoint_hash) == 16


def test_missing_unexpected_misshapen_keys_are_named_in_timm_names(tmp_path):
    spec = small("phikon", embed_dim=32, depth=2, num_heads=2)
    hf = timm_to_hf(dict(random_source(spec).vit.state_dict()), dinov2=False)
    hf.pop("encoder.layer.1.output.dense.weight")
    hf["encoder.layer.0.extra.weight"] = torch.zeros(2)
    hf["embeddings.cls_token"] = torch.zeros(1, 1, 48)
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf, path)
    with pytest.raises(WeightsError) as err:
        build_registry_encoder(spec, checkpoint=str(path))
    msg = str(err.value)
    assert str(path) in msg and "hf_vit layout" in msg
    assert "missing keys (1): blocks.1.mlp.fc2.weight" in msg
    assert "unexpected keys (1): encoder.layer.0.extra.weight" in msg
    assert "cls_token (file [1, 1, 48], model [1, 1, 32])" in msg


def test_ctranspath_file_in_the_transpath_layout_loads_back(tmp_path):
    spec = small("ctranspath", embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))
    src = random_source(spec)
    state = dict(src.vit.state_dict())
    # timm 1.0 -> timm 0.5.4 layout: merging back to the end of the previous stage, buffers persisted
    old = {
        re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", k): v
        for k, v in state.items()
    }
    for k in [k for k in old if k.endswith("relative_position_bias_table")]:
        old[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49)
    old["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    assert key_mismatch_lines(
        old, transpath_layout(32, (2, 2, 2, 2), (1, 1, 2, 2)) | {"layers.1.blocks.1.attn_mask": (16, 49, 49)},
        optional=("layers.1.blocks.1.attn_mask", "layers.2.blocks.1.attn_mask"),
    ) == []  # fmt: skip
    path = tmp_path / "ctranspath.pth"
    torch.save({"model": old}, path)  # the published file wraps the state dict in "model"
    enc = build_registry_encoder(spec, checkpoint=str(path)).eval()  # BatchNorm in the stem
    x = src.preprocess(tiles(2))
    assert torch.equal(enc(x), src(x)) and enc(x).shape == (2, 256)


def test_conch_file_loads_back_with_its_positional_embedding_resampled(tmp_path):
    spec = small("conch_v15", embed_dim=32, depth=1, num_heads=2)
    src = random_source(spec)
    trunk = {k: v.clone() for k, v in src.vit.state_dict().items()}
    pos14 = torch.randn(1, 1 + 14 * 14, 32)  # the file holds the 224 px grid
    trunk["pos_embed"] = pos14
    published = {f"trunk.{k}": v for k, v in trunk.items()}
    published |= {f"attn_pool_contrast.{k}": v.clone() for k, v in src.pool.attn.state_dict().items()}
    published |= {f"ln_contrast.{k}": v.clone() for k, v in src.pool.norm.state_dict().items()}
    torch.save(published, tmp_path / "pytorch_model_vision.bin")
    enc = build_registry_encoder(spec, checkpoint=str(tmp_path))
    assert torch.equal(enc.vit.pos_embed, dino_resample_pos_embed(pos14, 28))
    assert enc.vit.pos_embed.shape == (1, 1 + 28 * 28, 32)
    assert torch.equal(enc.pool.attn.to_kv.weight, src.pool.attn.to_kv.weight)
    x = enc.preprocess(tiles(1))
    assert x.shape == (1, 3, 448, 448) and enc(x).shape == (1, 768)
