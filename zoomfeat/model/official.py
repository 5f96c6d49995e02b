"""The released (official) checkpoint layout <-> zoomfeat's native (diffusers) modules.

Official layout (``brca/weights.ckpt``, docs/ARCHITECTURE.md "Model"): a flat state_dict of the
official ``LatentDiffusion`` -- 12 schedule buffers, ``model.diffusion_model.*`` (live UNet),
``model_ema.decay``, ``model_ema.num_updates`` and one dot-less ``model_ema.*`` copy per UNet
parameter, ``first_stage_model.*`` (VQ) and ``cond_stage_model.*`` (summarizer, same names).

- Import (:func:`convert_official_state_dict`) uses diffusers' own ``convert_ldm_unet_checkpoint``
  / ``convert_ldm_vae_checkpoint`` and copies by hand the one tensor the VQ converter misses
  (``quantize.embedding.weight``).
- Export (:func:`to_official_state_dict`) uses the exact inverse name mapping defined here
  (:func:`unet_key_to_official`, :func:`vq_key_to_official`), in the official registration order;
  the tests check it against the converters and the full-size key list.

The functions take the model (:class:`LayoutModel`, e.g. a ``ZoomLDM``) with ``config`` (the architecture dict),
``unet``, ``vq``, ``summarizer`` and ``schedule`` attributes: this module knows nothing of the
``ZoomLDM`` class (which imports it).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch
from torch import nn

from zoomfeat.model import unet as unet_mod
from zoomfeat.model import vq as vq_mod
from zoomfeat.model.schedule import OFFICIAL_BUFFERS, Schedule
from zoomfeat.runtime.errors import WeightsError
from zoomfeat.runtime.weights import key_mismatch_lines

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
VQ_PREFIX = "first_stage_model."
SUMMARIZER_PREFIX = "cond_stage_model."
EMA_EXTRA = ("model_ema.decay", "model_ema.num_updates")


def check_keys(
    found: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    source: str,
    what: str,
    optional: tuple[str, ...] = (),
    hint: str = "",
) -> None:
    """Raise :class:`WeightsError` naming missing / unexpected / misshapen keys.

    Args:
        found, expected: ``{name: tensor or shape}``; keys of ``expected`` starting with a prefix
            in ``optional`` may be absent.
        source: the file (or object) named first in the message. what: what ``expected`` is.
        hint: a last line saying what to do.
    """
    mismatch = key_mismatch_lines(found, expected, optional=optional)
    if not mismatch:
        return
    lines = [f"{source}: the weights do not match the {what}:", *mismatch]
    if hint:
        lines.append(hint)
    raise WeightsError("\n".join(lines))


# ================================================================================================
# native (diffusers) names -> official names


_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VQ_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet_rest(rest: str) -> str:
    head, _, param = rest.rpartition(".")
    return f"{_RESNET_TO_LDM[head]}.{param}"


def unet_key_to_official(key: str, cfg: Mapping[str, Any]) -> str:
    """diffusers UNet2DConditionModel key -> official key relative to ``model.diffusion_model.``."""
    r = cfg["num_res_blocks"]
    attn_levels = [2**lvl in cfg["attention_resolutions"] for lvl in range(len(cfg["channel_mult"]))]
    head, _, param = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{param}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + b * (r + 1) + j
        return (
            f"input_blocks.{idx}.0.{_resnet_rest(rest)}"
            if kind == "resnets"
            else f"input_blocks.{idx}.1.{rest}"
        )
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (r + 1)}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"middle_block.{2 * int(m[1])}.{_resnet_rest(m[2])}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = b * (r + 1) + j
        return (
            f"output_blocks.{idx}.0.{_resnet_rest(rest)}"
            if kind == "resnets"
            else f"output_blocks.{idx}.1.{rest}"
        )
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        b = int(m[1])
        has_attn = list(reversed(attn_levels))[b]
        return f"output_blocks.{b * (r + 1) + r}.{2 if has_attn else 1}.conv.{m[2]}"
    raise KeyError(f"no official name for UNet parameter {key!r}")


def vq_key_to_official(key: str, cfg: Mapping[str, Any]) -> str:
    """diffusers VQModel key -> official key relative to ``first_stage_model.``."""
    n = len(cfg["ch_mult"])
    if key.startswith(("quant_conv.", "post_quant_conv.", "quantize.")) or re.fullmatch(
        r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)", key
    ):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.fullmatch(
        r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)",
        key,
    )
    if m:
        return f"{m[1]}.mid.attn_1.{_VQ_ATTN_TO_LDM[m[2]]}.{m[3]}"
    raise KeyError(f"no official name for VQ parameter {key!r}")


def _vq_to_official_tensor(key: str, t: torch.Tensor) -> torch.Tensor:
    # The official mid-block attention uses 1x1 convs where diffusers uses Linear layers.
    if ".mid_block.attentions.0.to_" in key and key.endswith(".weight") and t.ndim == 2:
        return t[:, :, None, None]
    return t


def ema_key(official_unet_key: str) -> str:
    """``model.diffusion_model.a.b.c`` -> ``model_ema.diffusion_modelabc`` (the official EMA naming)."""
    return EMA_PREFIX + official_unet_key[len("model.") :].replace(".", "")


# ---- official key order (the official module registration order) ----

_ORDER = """
model model_ema first_stage_model cond_stage_model diffusion_model time_embed input_blocks
middle_block output_blocks out in_layers emb_layers out_layers skip_connection op norm proj_in q k v
transformer_blocks proj_out attn1 ff attn2 norm1 conv1 norm2 conv2 nin_shortcut norm3 to_q to_k to_v
to_out net proj pad_token mag_embedding dim_reduce encoder decoder quantize quant_conv
post_quant_conv final_proj layer_norm embedding conv_in down mid up norm_out conv_out block attn
downsample upsample conv block_ attn_ pos_embedding layers encoder_layer_ ln ln_1 self_attention
ln_2 mlp in_proj_weight in_proj_bias out_proj weight bias
""".split()
_RANK = {name: i for i, name in enumerate(_ORDER)}


def _sort_key(key: str) -> tuple[tuple[int, int, int | str], ...]:
    parts: list[tuple[int, int, int | str]] = []
    for comp in key.split("."):
        if comp.isdigit():
            parts.append((0, int(comp), 0))
            continue
        m = re.fullmatch(r"(.*?_)(\d+)", comp)
        if m and m[1] in _RANK:
            parts.append((1, int(m[2]), _RANK[m[1]]))
        else:
            parts.append((2, _RANK.get(comp, len(_RANK)), comp))
    return tuple(parts)


# ================================================================================================
# official <-> native


class LayoutModel(Protocol):
    """What the layout functions read of a model (``ZoomLDM`` has it)."""

    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def unet(self) -> Any: ...  # diffusers UNet2DConditionModel
    @property
    def vq(self) -> Any: ...  # diffusers VQModel
    @property
    def summarizer(self) -> nn.Module: ...
    @property
    def schedule(self) -> Schedule: ...
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


def official_unet_names(model: LayoutModel) -> OrderedDict[str, str]:
    """{native unet key: official key (with ``model.diffusion_model.``)} in official order."""
    cfg = model.config["unet"]
    pairs = [(k, UNET_PREFIX + unet_key_to_official(k, cfg)) for k in model.unet.state_dict()]
    return OrderedDict(sorted(pairs, key=lambda kv: _sort_key(kv[1])))


def official_vq_names(model: LayoutModel) -> OrderedDict[str, str]:
    cfg = model.config["vq"]
    pairs = [(k, VQ_PREFIX + vq_key_to_official(k, cfg)) for k in model.vq.state_dict()]
    return OrderedDict(sorted(pairs, key=lambda kv: _sort_key(kv[1])))


def to_official_state_dict(
    model: LayoutModel,
    ema_unet_state: Mapping[str, torch.Tensor] | None = None,
    ema_decay: float = 0.9999,
    ema_num_updates: int = 0,
) -> OrderedDict[str, torch.Tensor]:
    """The model as a flat state_dict in the released layout (and order).

    Args:
        model: a ZoomLDM (any device, the meta device included).
        ema_unet_state: the EMA UNet weights under the native (diffusers) UNet names, e.g. the
            trainer's EMA copy; None: the live UNet weights also fill the ``model_ema.*`` entries.
        ema_decay, ema_num_updates: the ``model_ema.decay`` / ``model_ema.num_updates`` scalars.

    Returns:
        ``{official name: tensor}``: 12 schedule buffers, the live UNet, the EMA bookkeeping and
        copy, the VQ (mid-attention weights as 1x1 convs) and the summarizer.
    """
    unet_sd = model.unet.state_dict()
    if ema_unet_state is not None:
        check_keys(ema_unet_state, unet_sd, source="ema_unet_state", what="UNet (diffusers names)")
    device = next(model.parameters()).device
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, t in model.schedule.official_buffers().items():
        out[name] = t.to(device)
    unet_names = official_unet_names(model)
    for native, official in unet_names.items():
        out[official] = unet_sd[native].detach()
    out["model_ema.decay"] = torch.tensor(float(ema_decay), dtype=torch.float32, device=device)
    out["model_ema.num_updates"] = torch.tensor(int(ema_num_updates), dtype=torch.int32, device=device)
    src = ema_unet_state if ema_unet_state is not None else unet_sd
    for native, official in unet_names.items():
        out[ema_key(official)] = src[native].detach()
    vq_sd = model.vq.state_dict()
    for native, official in official_vq_names(model).items():
        out[official] = _vq_to_official_tensor(native, vq_sd[native].detach())
    summ_sd = model.summarizer.state_dict()
    for k in sorted(summ_sd, key=_sort_key):
        out[SUMMARIZER_PREFIX + k] = summ_sd[k].detach()
    return out


def official_layout(model: LayoutModel) -> OrderedDict[str, tuple[int, ...]]:
    """{official key: shape} the model expects, in official order (works on the meta device)."""
    return OrderedDict((k, tuple(v.shape)) for k, v in to_official_state_dict(model).items())


@contextlib.contextmanager
def _quiet_diffusers():
    logger = logging.getLogger("diffusers.loaders.single_file_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def convert_official_state_dict(
    sd: Mapping[str, torch.Tensor], model: LayoutModel, ema: bool = True, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Official flat state_dict -> native ZoomLDM state_dict (``unet.*``, ``vq.*``, ``summarizer.*``).

    Args:
        sd: the official ``{name: tensor}`` (meta tensors allowed, except the schedule buffers).
        model: the ZoomLDM whose architecture the weights must fit (typically on the meta device).
        ema: take the UNet from the ``model_ema.*`` copy (True) or the live ``model.diffusion_model.*``.
        source: the file named in error messages.

    Returns:
        The native state_dict (tensors shared with ``sd`` where no reshaping is needed).

    Raises:
        WeightsError: missing / unexpected / misshapen keys (all named; with ``ema=False`` the
            ``model_ema.*`` group may be absent), or schedule buffers that differ from the config's.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    expected = official_layout(model)
    optional = () if ema else (EMA_PREFIX,)
    hint = (
        "  Is the config right? Pass the config.yaml released with this checkpoint "
        "(from_official(ckpt, config=...))."
    )
    if ema and not any(k.startswith(EMA_PREFIX) for k in sd):
        hint += " This checkpoint has no EMA weights: load it with ema=False to use the live weights."
    check_keys(
        sd,
        expected,
        source=source,
        what="official ZoomLDM layout for this config",
        optional=optional,
        hint=hint,
    )

    ref = model.schedule.official_buffers()
    for name in OFFICIAL_BUFFERS:
        if not torch.allclose(sd[name].double().cpu(), ref[name].double(), rtol=1e-5, atol=1e-7):
            raise WeightsError(
                f"{source}: schedule buffer {name!r} differs from the config's schedule "
                f"(timesteps/linear_start/linear_end); wrong config?"
            )

    unet_cfg = unet_mod.diffusers_config(model.config["unet"])
    vq_cfg = vq_mod.diffusers_config(model.config["vq"], model.config["diffusion"]["scale_factor"])
    with _quiet_diffusers():
        unet_sd = convert_ldm_unet_checkpoint(dict(sd), unet_cfg, extract_ema=ema)
        vq_sd = convert_ldm_vae_checkpoint(dict(sd), vq_cfg)
    # the one tensor diffusers' VQ converter does not carry over
    vq_sd["quantize.embedding.weight"] = sd[VQ_PREFIX + "quantize.embedding.weight"]

    if ema:
        # convert_ldm_unet_checkpoint only extracts EMA weights when > 100 model_ema.* keys exist;
        # make sure every tensor really came from the EMA copy.
        names = official_unet_names(model)
        for key, official in names.items():
            if unet_sd.get(key) is not sd[ema_key(official)]:
                unet_sd[key] = sd[ema_key(official)]
    native: dict[str, torch.Tensor] = {}
    for prefix, part in (("unet.", unet_sd), ("vq.", vq_sd)):
        for k, v in part.items():
            if v is None:
                raise WeightsError(f"{source}: conversion found no tensor for {prefix}{k}")
            native[prefix + k] = v
    for k, v in sd.items():
        if k.startswith(SUMMARIZER_PREFIX):
            native["summarizer." + k[len(SUMMARIZER_PREFIX) :]] = v
    return native
