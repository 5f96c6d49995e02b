"""Key-layout converters: a published checkpoint's state dict -> the ``timm`` layout zoomfeat builds.

Each converter takes the flat ``{name: tensor}`` a published file holds and returns the state
dict of :class:`~zoomfeat.encoders.base.TileEncoder`'s modules: trunk keys in ``timm`` names,
pooler keys (CONCH v1.5) under ``pool.``. Keys the published model does not use at inference
(HF ``pooler.*``, DINOv2's ``mask_token``, Swin's recomputed buffers) are dropped by name;
every other key is renamed or passed through, so a key the converter does not know stays and is
reported as unexpected by the strict loader. Tensors are only renamed, concatenated or resampled
-- meta tensors convert too (shapes only), which is how the tests check the full-size layouts.

Layouts (sources):

- ``hf_vit``: Hugging Face ``transformers`` ``ViTModel`` (``owkin/phikon``): ``embeddings.*``,
  ``encoder.layer.N.{layernorm_before, attention.attention.{query,key,value},
  attention.output.dense, layernorm_after, intermediate.dense, output.dense}``, ``layernorm``;
- ``hf_dinov2``: ``transformers`` ``Dinov2Model`` (``owkin/phikon-v2``): as ViT plus
  ``layer_scale{1,2}.lambda1``, ``norm1/norm2``, ``mlp.fc1/fc2``, ``embeddings.mask_token``;
- ``ctranspath``: TransPath's ``ctranspath.pth`` (timm 0.5.4 Swin: patch merging at the *end* of
  stages 0-2, persistent ``relative_position_index`` / ``attn_mask`` buffers);
- ``conch_v15``: TITAN's ``pytorch_model_vision.bin`` (``trunk.*`` timm-style ViT-L/16 at the
  224 px grid, ``attn_pool_contrast.*``, ``ln_contrast.*``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

State = dict[str, torch.Tensor]


def _strip(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> State:
    """Drop a wrapper prefix that every key carries (``vit.`` of ViTForImageClassification ...)."""
    out = dict(state)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _hf_common(state: State, block: Callable[[str, str], str | None]) -> State:
    """Embeddings, final norm and the fused qkv shared by HF ViT and DINOv2 layouts."""
    out: State = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    for k, v in state.items():
        if k in top:
            out[top[k]] = v
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", k)
        if m is None:
            out[k] = v  # unknown: left for the strict loader to name
            continue
        i, rest = int(m[1]), m[2]
        qm = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
        if qm:
            qkv.setdefault((i, qm[2]), {})[qm[1]] = v
            continue
        new = block(rest, f"blocks.{i}.")
        out[new if new is not None else k] = v
    for (i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
        else:  # an incomplete triple: keep the pieces so the loader names them
            for name, v in parts.items():
                out[f"encoder.layer.{i}.attention.attention.{name}.{kind}"] = v
    return out


_HF_VIT_BLOCK = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_DINOV2_BLOCK = {
    "norm1": "norm1",
    "attention.output.dense": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale2.lambda1": "ls2.gamma",
}


def _block_renamer(table: dict[str, str]) -> Callable[[str, str], str | None]:
    def rename(rest: str, prefix: str) -> str | None:
        if rest.endswith(("lambda1",)):
            return prefix + table[rest] if rest in table else None
        stem, _, leaf = rest.rpartition(".")
        return prefix + table[stem] + "." + leaf if stem in table else None

    return rename


def hf_vit(state: Mapping[str, torch.Tensor]) -> State:
    """``transformers`` ViTModel (Phikon) -> timm VisionTransformer; ``pooler.*`` dropped (unused)."""
    state = _strip(state, ("vit.", "model."))
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    return _hf_common(state, _block_renamer(_HF_VIT_BLOCK))


def hf_dinov2(state: Mapping[str, torch.Tensor]) -> State:
    """``transformers`` Dinov2Model (Phikon-v2) -> timm VisionTransformer; ``mask_token`` dropped."""
    state = _strip(state, ("dinov2.", "model."))
    state = {k: v for k, v in state.items() if k != "embeddings.mask_token"}
    return _hf_common(state, _block_renamer(_HF_DINOV2_BLOCK))


def ctranspath(state: Mapping[str, torch.Tensor]) -> State:
    """TransPath ``ctranspath.pth`` (timm 0.5.4 Swin) -> timm 1.0 Swin.

    Patch merging moves from the end of stage i to the start of stage i + 1 (timm's own
    ``swin_transformer.checkpoint_filter_fn`` does the same; the channel order of the merged
    2x2 neighbourhood is unchanged between the versions); ``relative_position_index`` and
    ``attn_mask`` are recomputed buffers, dropped; the classification head, if any, dropped.
    """
    state = _strip(state, ("module.", "model."))
    out: State = {}
    for k, v in state.items():
        if k.endswith(("relative_position_index", "attn_mask")) or k.startswith("head."):
            continue
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample.", k)
        out[k] = v
    return out


def dino_resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + n*n, D) -> (1, 1 + grid*grid, D) as DINO/iBOT's ``interpolate_pos_encoding`` does.

    Bicubic ``scale_factor=((grid + 0.1) / n)`` (the "+0.1" of facebookresearch/dino#8), no
    antialias -- what CONCH v1.5's trunk computes at every forward for a 448 px input.
    """
    n = math.isqrt(pos.shape[1] - 1)
    if n * n != pos.shape[1] - 1:
        raise ValueError(f"positional embedding of {pos.shape[1]} tokens is not 1 + a square grid")
    if n == grid:
        return pos
    cls, patches = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    scale = (grid + 0.1) / n
    patches = F.interpolate(
        patches.reshape(1, n, n, dim).permute(0, 3, 1, 2).float(),
        scale_factor=(scale, scale),
        mode="bicubic",
    )
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos.dtype)
    return torch.cat([cls, patches], dim=1)


def _timm_resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """``timm.layers.resample_abs_pos_embed`` (bilinear, no antialias) to a ``grid`` x ``grid`` lattice."""
    from timm.layers import resample_abs_pos_embed

    if pos.shape[1] == 1 + grid * grid:
        return pos
    return resample_abs_pos_embed(
        pos, new_size=[grid, grid], num_prefix_tokens=1, interpolation="bilinear", antialias=False
    )


#: CONCH v1.5's trunk is built for 224 px (a 14 x 14 grid) and its positional embedding is
#: resampled to that grid on load (TRIDENT ``resize_pos_embed``), then to the 448 px grid at
#: every forward; zoomfeat builds the trunk at 448 px and does both resamplings once, here.
CONCH_TRUNK_GRID = 224 // 16
CONCH_INPUT_GRID = 448 // 16


def conch_v15(state: Mapping[str, torch.Tensor]) -> State:
    """TITAN's CONCH v1.5 vision tower -> timm ViT-L/16 at 448 px (``trunk.`` stripped) + ``pool.*``."""
    out: State = {}
    for k, v in state.items():
        if k.startswith("trunk."):
            out[k[len("trunk.") :]] = v
        elif k.startswith("attn_pool_contrast."):
            out["pool.attn." + k[len("attn_pool_contrast.") :]] = v
        elif k.startswith("ln_contrast."):
            out["pool.norm." + k[len("ln_contrast.") :]] = v
        else:
            out[k] = v
    if "pos_embed" in out:
        pos = _timm_resample_pos_embed(out["pos_embed"], CONCH_TRUNK_GRID)
        out["pos_embed"] = dino_resample_pos_embed(pos, CONCH_INPUT_GRID)
    return out


CONVERTERS: dict[str, Callable[[Mapping[str, torch.Tensor]], State]] = {
    "hf_vit": hf_vit,
    "hf_dinov2": hf_dinov2,
    "ctranspath": ctranspath,
    "conch_v15": conch_v15,
}


def convert(name: str | None, state: Mapping[str, torch.Tensor]) -> State:
    """Apply converter ``name`` (None: the file is already in timm layout)."""
    return dict(state) if name is None else CONVERTERS[name](state)
