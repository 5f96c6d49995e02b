"""ZoomLDM's first stage: the VQ-f4 autoencoder hosted in diffusers' ``VQModel``.

* ``encode`` = encoder + quant_conv, NOT quantised (official ``encode_first_stage``); the diffusion
  latent is that times ``scale_factor`` (1.0 for ZoomLDM).
* ``decode`` quantises first (nearest code), then post_quant_conv + decoder (``decode_first_stage``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # diffusers costs seconds to import: only a model build imports it
    from diffusers import VQModel

# Official VQModelInterface params (first_stage_config.params, with ddconfig flattened in).
VQ_DEFAULTS: dict[str, Any] = {
    "embed_dim": 3,
    "n_embed": 8192,
    "double_z": False,
    "z_channels": 3,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
VQ_IGNORED = (
    "lossconfig",
    "ckpt_path",
    "ignore_keys",
    "image_key",
    "monitor",
    "remap",
    "sane_index_shape",
    "colorize_nlabels",
    "batch_resize_range",
    "scheduler_config",
    "lr_g_factor",
    "use_ema",
)


def normalize_vq_config(params: dict[str, Any]) -> dict[str, Any]:
    """Official ``first_stage_config.params`` (ddconfig nested) or our flat ``vq:`` section -> checked dict."""
    flat = {k: v for k, v in params.items() if k != "ddconfig"}
    flat.update(params.get("ddconfig") or {})
    unknown = sorted(set(flat) - set(VQ_DEFAULTS) - set(VQ_IGNORED))
    if unknown:
        raise ValueError(f"unsupported VQ config keys: {unknown}")
    cfg = {k: flat.get(k, v) for k, v in VQ_DEFAULTS.items()}
    cfg["ch_mult"] = [int(m) for m in cfg["ch_mult"]]
    cfg["attn_resolutions"] = list(cfg["attn_resolutions"] or [])
    if cfg["double_z"]:
        raise ValueError("VQ config double_z=true is not supported (a VQ-f4 first stage has double_z false)")
    if cfg["attn_resolutions"]:
        raise ValueError(
            "VQ config attn_resolutions must be empty (diffusers' VQModel has attention only in the mid block)"
        )
    return cfg


def diffusers_config(cfg: dict[str, Any], scale_factor: float = 1.0) -> dict[str, Any]:
    n = len(cfg["ch_mult"])
    return {
        "in_channels": cfg["in_channels"],
        "out_channels": cfg["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [cfg["ch"] * m for m in cfg["ch_mult"]],
        "layers_per_block": cfg["num_res_blocks"],
        "act_fn": "silu",
        "latent_channels": cfg["z_channels"],
        "sample_size": cfg["resolution"],
        "num_vq_embeddings": cfg["n_embed"],
        "norm_num_groups": 32,
        "vq_embed_dim": cfg["embed_dim"],
        "scaling_factor": float(scale_factor),
        "norm_type": "group",
        "mid_block_add_attention": True,
        "lookup_from_codebook": False,
        "force_upcast": False,
    }


def build_vq(cfg: dict[str, Any], scale_factor: float = 1.0) -> VQModel:
    from diffusers import VQModel

    return VQModel(**diffusers_config(cfg, scale_factor))


def downsample_factor(cfg: dict[str, Any]) -> int:
    return 2 ** (len(cfg["ch_mult"]) - 1)


def quantize(vq: VQModel, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-code quantisation: (quantised latents [B,C,h,w], code indices [B,h,w])."""
    quant, _, (_, _, idx) = vq.quantize(latents)
    return quant, idx.reshape(latents.shape[0], latents.shape[2], latents.shape[3])
