"""ZoomLDM's UNet hosted in diffusers' ``UNet2DConditionModel``, plus named taps.

The official ``openaimodel.UNetModel`` maps exactly onto ``UNet2DConditionModel`` (golden README,
"Hosting the UNet and VQ in diffusers").  Taps use the official block names:

* ``input_blocks.0`` = conv_in; for level l and layer j: ``input_blocks.{1 + l*(R+1) + j}`` =
  resnet (+ transformer); the downsample conv of level l is ``input_blocks.{(l+1)*(R+1)}``
  (R = num_res_blocks);
* ``middle_block``;
* ``output_blocks.{b*(R+1) + j}`` for up block b (the last one of each up block includes its
  upsampler).

:func:`iter_blocks` runs the same sub-modules as ``UNet2DConditionModel.forward`` one official
block at a time (a generator); :func:`forward_taps` stops it as soon as the deepest requested
block has run: the rest of the network is never computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # diffusers costs seconds to import: only a model build imports it
    from diffusers import UNet2DConditionModel

# Official UNetModel params we understand; anything else with a non-default value is refused.
UNET_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "model_channels": 192,
    "attention_resolutions": [8, 4, 2],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 3, 5],
    "num_heads": 1,
    "num_head_channels": -1,
    "transformer_depth": 1,
    "context_dim": 512,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "conv_resample": True,
    "dims": 2,
    "dropout": 0.0,
    "num_classes": None,
    "use_fp16": False,
}
# Accepted and ignored (training / init-time only).
UNET_IGNORED = (
    "use_checkpoint",
    "ckpt_path",
    "legacy",
    "num_heads_upsample",
    "use_bf16",
    "use_new_attention_order",
)


def normalize_unet_config(params: dict[str, Any]) -> dict[str, Any]:
    """Official ``unet_config.params`` (or our native ``unet:`` section) -> full, checked dict."""
    unknown = sorted(set(params) - set(UNET_DEFAULTS) - set(UNET_IGNORED))
    if unknown:
        raise ValueError(f"unsupported UNet config keys: {unknown}")
    cfg = {k: params.get(k, v) for k, v in UNET_DEFAULTS.items()}
    cfg["attention_resolutions"] = [int(r) for r in cfg["attention_resolutions"]]
    cfg["channel_mult"] = [int(m) for m in cfg["channel_mult"]]
    checks = {
        "use_spatial_transformer": True,
        "resblock_updown": False,
        "conv_resample": True,
        "dims": 2,
        "num_classes": None,
    }
    for key, want in checks.items():
        if cfg[key] != want:
            raise ValueError(f"UNet config {key}={cfg[key]!r} is not supported (ZoomLDM uses {want!r})")
    if cfg["context_dim"] is None:
        raise ValueError("UNet config needs context_dim (cross-attention width = summarizer output_channels)")
    if cfg["model_channels"] * min(cfg["channel_mult"]) % 32:
        raise ValueError("UNet widths must be multiples of 32 (GroupNorm(32, .))")
    return cfg


def diffusers_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``UNet2DConditionModel`` kwargs hosting the official UNet exactly."""
    mult = cfg["channel_mult"]
    attn = [2**level in cfg["attention_resolutions"] for level in range(len(mult))]
    widths = [cfg["model_channels"] * m for m in mult]
    if cfg["num_head_channels"] == -1:
        heads: int | list[int] = int(cfg["num_heads"])
    else:
        heads = [w // cfg["num_head_channels"] for w in widths]
    return {
        "sample_size": cfg["image_size"],
        "in_channels": cfg["in_channels"],
        "out_channels": cfg["out_channels"],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": widths,
        "layers_per_block": cfg["num_res_blocks"],
        "cross_attention_dim": cfg["context_dim"],
        # diffusers reads attention_head_dim as the number of heads here (legacy naming)
        "attention_head_dim": heads,
        "use_linear_projection": bool(cfg["use_linear_in_transformer"]),
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "transformer_layers_per_block": cfg["transformer_depth"],
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "upcast_attention": False,
        "resnet_time_scale_shift": "scale_shift" if cfg["use_scale_shift_norm"] else "default",
        "center_input_sample": False,
    }


def build_unet(cfg: dict[str, Any]) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**diffusers_config(cfg))


# ----------------------------------------------------------------------------------------------
# block names and widths


def block_names(cfg: dict[str, Any]) -> list[str]:
    """Official block names in execution order."""
    levels, r = len(cfg["channel_mult"]), cfg["num_res_blocks"]
    n = levels * (r + 1)
    return (
        [f"input_blocks.{i}" for i in range(n)] + ["middle_block"] + [f"output_blocks.{i}" for i in range(n)]
    )


def block_channels(cfg: dict[str, Any]) -> dict[str, int]:
    """{official block name: output channels}, computed from the config (nothing runs)."""
    mult, r, ch = cfg["channel_mult"], cfg["num_res_blocks"], cfg["model_channels"]
    levels = len(mult)
    out = {"input_blocks.0": ch * mult[0]}
    idx = 1
    for level in range(levels):
        for _ in range(r):
            out[f"input_blocks.{idx}"] = ch * mult[level]
            idx += 1
        if level < levels - 1:
            out[f"input_blocks.{idx}"] = ch * mult[level]
            idx += 1
    out["middle_block"] = ch * mult[-1]
    idx = 0
    for b in range(levels):
        for _ in range(r + 1):
            out[f"output_blocks.{idx}"] = ch * mult[levels - 1 - b]
            idx += 1
    return out


def check_tap_names(cfg: dict[str, Any], names: Sequence[str] | str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("no tap names given")
    valid = block_names(cfg)
    bad = [n for n in names if n not in valid]
    if bad:
        n_in = sum(v.startswith("input_blocks.") for v in valid)
        raise ValueError(
            f"unknown tap name(s) {bad}; valid names: input_blocks.0..{n_in - 1}, middle_block, "
            f"output_blocks.0..{n_in - 1}"
        )
    return names


# ----------------------------------------------------------------------------------------------
# forward


def time_embedding(
    unet: UNet2DConditionModel, sample: torch.Tensor, timestep: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sinusoidal [cos | sin] embedding, time-MLP output), as ``UNet2DConditionModel.forward`` does."""
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    return t_emb, unet.time_embedding(t_emb, None)


def iter_blocks(
    unet: UNet2DConditionModel, sample: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
) -> Iterator[tuple[str, torch.Tensor]]:
    """Run ``unet`` one official block at a time, yielding ``(official name, output)`` in order.

    The same sub-modules, in the same order, as ``UNet2DConditionModel.forward``; a consumer that
    stops iterating stops the forward (nothing after the last block it took is computed).

    Args:
        unet: the diffusers UNet. sample: latent [B, C, h, w]. emb: time embedding [B, E]
            (:func:`time_embedding`). context: cross-attention context [B, tokens, D].

    Yields:
        ``("input_blocks.0", [B, C0, h, w])`` ... ``("output_blocks.{last}", ...)``; the input
        blocks' outputs are the skips the output blocks concatenate.
    """
    # 1. input blocks: conv_in, then per level its resnets (+ transformers) and its downsampler
    h = unet.conv_in(sample)
    skips = [h]
    yield "input_blocks.0", h
    idx = 1
    for down in unet.down_blocks:
        attns = getattr(down, "attentions", None) if getattr(down, "has_cross_attention", False) else None
        for j, resnet in enumerate(down.resnets):
            h = resnet(h, emb)
            if attns is not None:
                h = attns[j](h, encoder_hidden_states=context, return_dict=False)[0]
            skips.append(h)
            yield f"input_blocks.{idx}", h
            idx += 1
        if down.downsamplers is not None:
            for ds in down.downsamplers:
                h = ds(h)
            skips.append(h)
            yield f"input_blocks.{idx}", h
            idx += 1

    # 2. middle block: resnet, transformer, resnet
    h = unet.mid_block(h, emb, encoder_hidden_states=context)
    yield "middle_block", h

    # 3. output blocks: [h, skip] -> resnet (+ transformer); the last of a level upsamples
    up_factor = 2**unet.num_upsamplers
    forward_upsample_size = any(d % up_factor for d in sample.shape[-2:])
    idx = 0
    for b, up in enumerate(unet.up_blocks):
        attns = getattr(up, "attentions", None) if getattr(up, "has_cross_attention", False) else None
        n_res = len(up.resnets)
        upsample_size = None
        if forward_upsample_size and b < len(unet.up_blocks) - 1:
            upsample_size = skips[-n_res - 1].shape[2:]
        for j, resnet in enumerate(up.resnets):
            h = torch.cat([h, skips.pop()], dim=1)
            h = resnet(h, emb)
            if attns is not None:
                h = attns[j](h, encoder_hidden_states=context, return_dict=False)[0]
            if j == n_res - 1 and up.upsamplers is not None:
                for us in up.upsamplers:
                    h = us(h, upsample_size)
            yield f"output_blocks.{idx}", h
            idx += 1


def forward_taps(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    *,
    timestep: int | torch.Tensor,
    context: torch.Tensor,
    names: list[str],
) -> dict[str, torch.Tensor]:
    """Outputs of the named official blocks; returns right after the deepest one has run.

    Args:
        unet: the diffusers UNet. sample: latent [B, C, h, w]. timestep: int or LongTensor [B].
        context: [B, tokens, D]. names: official block names (checked by :func:`check_tap_names`).

    Returns:
        ``{name: [B, C_name, h_name, w_name]}`` in the order of ``names``.
    """
    want = set(names)
    found: dict[str, torch.Tensor] = {}
    _, emb = time_embedding(unet, sample, timestep)
    for name, h in iter_blocks(unet, sample, emb, context):
        if name in want:
            found[name] = h
            if len(found) == len(want):
                return {n: found[n] for n in names}
    raise AssertionError(f"taps {sorted(want - set(found))} were not produced")  # pragma: no cover
