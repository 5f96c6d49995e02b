"""Checkpoints: the released (official) layout <-> zoomfeat's native modules, configs, hub look-up.

Official layout (``brca/weights.ckpt``): a flat state_dict of the official ``LatentDiffusion``:
12 schedule buffers, ``model.diffusion_model.*`` (live UNet), ``model_ema.decay``,
``model_ema.num_updates`` and one dot-less ``model_ema.*`` copy per UNet parameter,
``first_stage_model.*`` (VQ) and ``cond_stage_model.*`` (summarizer).

Loading uses diffusers' own ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` and
copies the one tensor the VQ converter misses (``quantize.embedding.weight``) by hand.  Export uses
the exact inverse mapping defined here (checked against the converters in the tests).

Nothing here ever unpickles code: ``torch.load(weights_only=True)`` or safetensors only.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from zoomfeat.model import unet as unet_mod
from zoomfeat.model import vq as vq_mod
from zoomfeat.model.schedule import OFFICIAL_BUFFERS
from zoomfeat.runtime.errors import WeightsError, WeightsNotFoundError
from zoomfeat.runtime.weights import key_mismatch_lines, names_preview

if TYPE_CHECKING:  # pragma: no cover
    from zoomfeat.model.zoomldm import ZoomLDM

HUB_ID = "StonyBrook-CVLab/ZoomLDM"
HUB_SUBFOLDER = "brca"
HUB_DEFAULT_SUBFOLDERS = {HUB_ID.lower(): HUB_SUBFOLDER}
OFFICIAL_WEIGHTS = "weights.ckpt"
NATIVE_WEIGHTS = "model.safetensors"
CONFIG_NAME = "config.yaml"
NATIVE_FORMAT_VERSION = 1

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
VQ_PREFIX = "first_stage_model."
SUMMARIZER_PREFIX = "cond_stage_model."
EMA_EXTRA = ("model_ema.decay", "model_ema.num_updates")


#: a checkpoint or config that cannot be loaded (the shared runtime's WeightsError)
CheckpointError = WeightsError


# ================================================================================================
# configs

SUMMARIZER_DEFAULTS: dict[str, Any] = {
    "input_channels": 1024,
    "hidden_channels": 512,
    "output_channels": 512,
    "num_layers": 12,
    "num_heads": 8,
    "vit_mlp_dim": 2048,
    "num_mags": 8,
    "p_uncond": 0.1,
}
SUMMARIZER_IGNORED = ("feat_key", "mag_key")
DIFFUSION_DEFAULTS: dict[str, Any] = {
    "timesteps": 1000,
    "linear_start": 0.0015,
    "linear_end": 0.0195,
    "beta_schedule": "linear",
    "parameterization": "eps",
    "scale_factor": 1.0,
}


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists; everything else deep-copied."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, DictConfig | ListConfig):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return copy.deepcopy(obj)


def normalize_summarizer_config(params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(SUMMARIZER_DEFAULTS) - set(SUMMARIZER_IGNORED))
    if unknown:
        raise ValueError(f"unsupported summarizer config keys: {unknown}")
    cfg = {k: params.get(k, v) for k, v in SUMMARIZER_DEFAULTS.items()}
    for k in (
        "input_channels",
        "hidden_channels",
        "output_channels",
        "num_layers",
        "num_heads",
        "vit_mlp_dim",
        "num_mags",
    ):
        cfg[k] = int(cfg[k])
    cfg["p_uncond"] = float(cfg["p_uncond"])
    return cfg


def normalize_diffusion_config(params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(DIFFUSION_DEFAULTS))
    if unknown:
        raise ValueError(f"unsupported diffusion config keys: {unknown}")
    cfg = {k: params.get(k, v) for k, v in DIFFUSION_DEFAULTS.items()}
    cfg["timesteps"] = int(cfg["timesteps"])
    for k in ("linear_start", "linear_end", "scale_factor"):
        cfg[k] = float(cfg[k])
    return cfg


def normalize_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Native architecture dict {unet, vq, summarizer, diffusion} -> complete, checked plain dict."""
    missing = [k for k in ("unet", "vq", "summarizer") if k not in arch]
    if missing:
        raise ValueError(f"model config lacks section(s) {missing}")
    out = {
        "unet": unet_mod.normalize_unet_config(dict(arch["unet"])),
        "vq": vq_mod.normalize_vq_config(dict(arch["vq"])),
        "summarizer": normalize_summarizer_config(dict(arch["summarizer"])),
        "diffusion": normalize_diffusion_config(dict(arch.get("diffusion") or {})),
    }
    if out["unet"]["context_dim"] != out["summarizer"]["output_channels"]:
        raise ValueError(
            f"UNet context_dim ({out['unet']['context_dim']}) must equal summarizer output_channels "
            f"({out['summarizer']['output_channels']})"
        )
    if out["unet"]["in_channels"] != out["vq"]["embed_dim"]:
        raise ValueError(
            f"UNet in_channels ({out['unet']['in_channels']}) must equal VQ embed_dim ({out['vq']['embed_dim']})"
        )
    return out


def _target_ok(section: Mapping[str, Any], suffixes: tuple[str, ...], what: str) -> None:
    target = str(section.get("target", ""))
    if not target.endswith(suffixes):
        raise ValueError(f"official config: {what} target {target!r} is not one of {list(suffixes)}")


def arch_from_official(d: Mapping[str, Any]) -> dict[str, Any]:
    """Official ZoomLDM YAML (model.target LatentDiffusion ...) -> native architecture dict."""
    model = d["model"]
    _target_ok(model, ("LatentDiffusion",), "model")
    p = model.get("params") or {}
    if p.get("conditioning_key", "crossattn") != "crossattn":
        raise ValueError(f"official config: conditioning_key {p.get('conditioning_key')!r} is not supported")
    if p.get("scale_by_std", False):
        raise ValueError(
            "official config: scale_by_std=true is not supported (ZoomLDM uses scale_factor 1.0)"
        )
    _target_ok(p["unet_config"], ("openaimodel.UNetModel",), "unet_config")
    _target_ok(p["first_stage_config"], ("VQModelInterface", "VQModel"), "first_stage_config")
    _target_ok(p["cond_stage_config"], ("EmbeddingViT2_5",), "cond_stage_config")
    diffusion = {
        k: p[k]
        for k in (
            "timesteps",
            "linear_start",
            "linear_end",
            "beta_schedule",
            "parameterization",
            "scale_factor",
        )
        if k in p
    }
    return normalize_arch(
        {
            "unet": dict(p["unet_config"].get("params") or {}),
            "vq": dict(p["first_stage_config"].get("params") or {}),
            "summarizer": dict(p["cond_stage_config"].get("params") or {}),
            "diffusion": diffusion,
        }
    )


def official_config(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Native architecture -> official-format YAML dict (what ``save_official`` writes)."""
    u, v, s, dif = arch["unet"], arch["vq"], arch["summarizer"], arch["diffusion"]
    unet_params = {"use_checkpoint": True, **u}
    ddconfig = {
        k: v[k]
        for k in (
            "double_z",
            "z_channels",
            "resolution",
            "in_channels",
            "out_ch",
            "ch",
            "ch_mult",
            "num_res_blocks",
            "attn_resolutions",
            "dropout",
        )
    }
    cond = {
        "feat_key": "ssl_feat",
        "mag_key": "mag",
        "num_layers": s["num_layers"],
        "input_channels": s["input_channels"],
        "hidden_channels": s["hidden_channels"],
        "vit_mlp_dim": s["vit_mlp_dim"],
        "output_channels": s["output_channels"],
        "p_uncond": s["p_uncond"],
    }
    if s["num_heads"] != 8:
        cond["num_heads"] = s["num_heads"]
    if s["num_mags"] != 8:
        cond["num_mags"] = s["num_mags"]
    params: dict[str, Any] = {
        "linear_start": dif["linear_start"],
        "linear_end": dif["linear_end"],
        "num_timesteps_cond": 1,
        "log_every_t": 200,
        "timesteps": dif["timesteps"],
        "first_stage_key": "image",
        "cond_stage_key": "hybrid",
        "image_size": u["image_size"],
        "channels": u["in_channels"],
        "cond_stage_trainable": True,
        "conditioning_key": "crossattn",
        "use_ema": True,
        "x_feat_extracted": True,
    }
    if dif["beta_schedule"] != "linear":
        params["beta_schedule"] = dif["beta_schedule"]
    if dif["scale_factor"] != 1.0:
        params["scale_factor"] = dif["scale_factor"]
    params["unet_config"] = {
        "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "params": unet_params,
    }
    params["first_stage_config"] = {
        "target": "ldm.models.autoencoder.VQModelInterface",
        "params": {
            "embed_dim": v["embed_dim"],
            "n_embed": v["n_embed"],
            "ddconfig": ddconfig,
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    }
    params["cond_stage_config"] = {"target": "ldm.modules.encoders.modules.EmbeddingViT2_5", "params": cond}
    return {
        "model": {
            "base_learning_rate": 2.0e-05,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": params,
        }
    }


def read_config(source: str | Path | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, architecture) from a config name ("zoomldm_brca", "tiny"), a YAML path or a mapping.

    Both formats are understood: the official ZoomLDM YAML (``model: target: ...LatentDiffusion``)
    and zoomfeat's native one (``unet:``/``vq:``/``summarizer:``/``diffusion:`` sections, as in
    ``conf/model/*.yaml`` and ``save_pretrained``'s ``config.yaml``).
    """
    name = "custom"
    where = "config"
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        if path.suffix in (".yaml", ".yml") or path.is_file():
            if not path.is_file():
                raise FileNotFoundError(f"model config not found: {path}")
            where = str(path)
            name = path.stem if path.name != CONFIG_NAME else path.parent.name or "custom"
            with open(path) as f:
                data = yaml.safe_load(f)
        else:
            from zoomfeat.runtime.resources import config_file

            path = config_file("model", str(source))
            where = str(path)
            name = str(source)
            with open(path) as f:
                data = yaml.safe_load(f)
    else:
        data = _plain(source)
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: a model config must be a mapping, got {type(data).__name__}")
    data = _plain(data)
    try:
        if "model" in data and isinstance(data["model"], Mapping) and "target" in data["model"]:
            arch = arch_from_official(data)
        else:
            name = str(data.get("name") or name)
            arch = normalize_arch(
                {k: data[k] for k in ("unet", "vq", "summarizer", "diffusion") if k in data}
            )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: invalid ZoomLDM config: {err}") from err
    return name, arch


def native_config_document(
    name: str, arch: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict:
    doc: dict[str, Any] = {"name": name, "checkpoint": None}
    doc.update(copy.deepcopy(dict(arch)))
    if extra:
        doc["zoomfeat"] = dict(extra)
    return doc


def write_yaml(doc: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(_plain(dict(doc)), f, sort_keys=False)
    tmp.replace(path)


# ================================================================================================
# safe loading


def _refuse(path: Path, err: Exception) -> CheckpointError:
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
    what = f" (it holds an object of type {found[1]})" if found else ""
    return CheckpointError(
        f"{path}: refusing to load this file: it needs arbitrary Python objects unpickled{what}. "
        "zoomfeat only reads plain tensors (torch.load(weights_only=True) or safetensors) and never runs code "
        "from a checkpoint. Re-save its state_dict as a flat dict of tensors (torch.save(model.state_dict(), ...)) "
        "or as safetensors, where you trust the file."
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from ``.ckpt``/``.pt``/``.pth``/``.bin`` (weights_only) or ``.safetensors``.

    A Lightning-style ``{"state_dict": {...}, ...}`` wrapper is unwrapped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file: {err}") from err
    else:
        obj = None
        for mmap in (True, False):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
                break
            except pickle.UnpicklingError as err:
                if "Unsupported global" in str(err):
                    raise _refuse(path, err) from err
                found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
                why = found[1].strip() if found else str(err).splitlines()[0]
                raise CheckpointError(
                    f"{path}: not a readable torch checkpoint (the weights-only unpickler rejected it: {why})"
                ) from err
            except RuntimeError as err:
                if mmap and "mmap" in str(err).lower():
                    continue  # legacy (non-zip) serialisation: read it without mmap
                if "weights only" in str(err).lower():
                    raise _refuse(path, err) from err
                raise CheckpointError(f"{path}: not a readable torch checkpoint ({err})") from err
            except Exception as err:  # zip/pickle garbage raises KeyError, EOFError, OSError ...
                raise CheckpointError(
                    f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})"
                ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a flat mapping of tensor names to tensors, got {type(obj).__name__}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {names_preview(bad)}")
    return dict(obj)


# ================================================================================================
# key checks


def check_keys(
    found: Mapping[str, Any],
    expected: Mapping[str, Any],
    source: str,
    what: str,
    optional: tuple[str, ...] = (),
    hint: str = "",
) -> None:
    """Raise CheckpointError naming missing / unexpected / misshapen keys (values: tensors or shapes)."""
    mismatch = key_mismatch_lines(found, expected, optional)
    if not mismatch:
        return
    lines = [f"{source}: the weights do not match the {what}:", *mismatch]
    if hint:
        lines.append(hint)
    raise CheckpointError("\n".join(lines))


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

_ORDER = [
    "model",
    "model_ema",
    "first_stage_model",
    "cond_stage_model",
    "diffusion_model",
    "time_embed",
    "input_blocks",
    "middle_block",
    "output_blocks",
    "out",
    "in_layers",
    "emb_layers",
    "out_layers",
    "skip_connection",
    "op",
    "norm",
    "proj_in",
    "q",
    "k",
    "v",
    "transformer_blocks",
    "proj_out",
    "attn1",
    "ff",
    "attn2",
    "norm1",
    "conv1",
    "norm2",
    "conv2",
    "nin_shortcut",
    "norm3",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "net",
    "proj",
    "pad_token",
    "mag_embedding",
    "dim_reduce",
    "encoder",
    "decoder",
    "quantize",
    "quant_conv",
    "post_quant_conv",
    "final_proj",
    "layer_norm",
    "embedding",
    "conv_in",
    "down",
    "mid",
    "up",
    "norm_out",
    "conv_out",
    "block",
    "attn",
    "downsample",
    "upsample",
    "conv",
    "block_",
    "attn_",
    "pos_embedding",
    "layers",
    "encoder_layer_",
    "ln",
    "ln_1",
    "self_attention",
    "ln_2",
    "mlp",
    "in_proj_weight",
    "in_proj_bias",
    "out_proj",
    "weight",
    "bias",
]
_RANK = {name: i for i, name in enumerate(_ORDER)}


def _sort_key(key: str) -> tuple:
    parts = []
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


def official_unet_names(model: ZoomLDM) -> OrderedDict[str, str]:
    """{native unet key: official key (with ``model.diffusion_model.``)} in official order."""
    cfg = model.config["unet"]
    pairs = [(k, UNET_PREFIX + unet_key_to_official(k, cfg)) for k in model.unet.state_dict()]
    return OrderedDict(sorted(pairs, key=lambda kv: _sort_key(kv[1])))


def official_vq_names(model: ZoomLDM) -> OrderedDict[str, str]:
    cfg = model.config["vq"]
    pairs = [(k, VQ_PREFIX + vq_key_to_official(k, cfg)) for k in model.vq.state_dict()]
    return OrderedDict(sorted(pairs, key=lambda kv: _sort_key(kv[1])))


def to_official_state_dict(
    model: ZoomLDM,
    ema_unet_state: Mapping[str, torch.Tensor] | None = None,
    ema_decay: float = 0.9999,
    ema_num_updates: int = 0,
) -> OrderedDict[str, torch.Tensor]:
    """The model as a flat state_dict in the released layout (and order).

    ``ema_unet_state``: the EMA UNet weights under the native (diffusers) UNet names, e.g. the
    trainer's EMA copy; when None the live UNet weights also fill the ``model_ema.*`` entries.
    """
    unet_sd = model.unet.state_dict()
    if ema_unet_state is not None:
        check_keys(ema_unet_state, unet_sd, "ema_unet_state", "UNet (diffusers names)")
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


def official_layout(model: ZoomLDM) -> OrderedDict[str, tuple[int, ...]]:
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
    sd: Mapping[str, torch.Tensor], model: ZoomLDM, ema: bool = True, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Official flat state_dict -> native ZoomLDM state_dict (``unet.*``, ``vq.*``, ``summarizer.*``).

    Validates the key set first (missing / unexpected / misshapen keys are named); with
    ``ema=False`` the ``model_ema.*`` group may be absent.  Schedule buffers must match the config.
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
    check_keys(sd, expected, source, "official ZoomLDM layout for this config", optional=optional, hint=hint)

    ref = model.schedule.official_buffers()
    for name in OFFICIAL_BUFFERS:
        if not torch.allclose(sd[name].double().cpu(), ref[name].double(), rtol=1e-5, atol=1e-7):
            raise CheckpointError(
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
        for native, official in names.items():
            if unet_sd.get(native) is not sd[ema_key(official)]:
                unet_sd[native] = sd[ema_key(official)]
    native: dict[str, torch.Tensor] = {}
    for prefix, part in (("unet.", unet_sd), ("vq.", vq_sd)):
        for k, v in part.items():
            if v is None:
                raise CheckpointError(f"{source}: conversion found no tensor for {prefix}{k}")
            native[prefix + k] = v
    for k, v in sd.items():
        if k.startswith(SUMMARIZER_PREFIX):
            native["summarizer." + k[len(SUMMARIZER_PREFIX) :]] = v
    return native


# ================================================================================================
# model hub

_HUB_RE = re.compile(r"(?:hf://)?([A-Za-z0-9][\w.-]*)/([\w.-]+)((?:/[\w.-]+)*)/?")


def parse_hub_id(s: str) -> tuple[str, str | None] | None:
    """ "owner/name[/subfolder]" (optionally "hf://...") -> (repo_id, subfolder); None if not hub-like."""
    m = _HUB_RE.fullmatch(s.strip())
    if not m or s.startswith((".", "/", "~")):
        return None
    repo = f"{m[1]}/{m[2]}"
    sub = m[3].strip("/") or HUB_DEFAULT_SUBFOLDERS.get(repo.lower())
    return repo, sub


def hub_file(
    repo_id: str,
    filename: str,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Download (or find in huggingface_hub's cache) one file; a clear error when that is impossible."""
    from huggingface_hub import hf_hub_download

    where = f"{repo_id}/{subfolder + '/' if subfolder else ''}{filename}"
    try:
        return Path(
            hf_hub_download(
                repo_id, filename, subfolder=subfolder or None, revision=revision, cache_dir=cache_dir
            )
        )
    except Exception as err:  # offline, not cached, gated, missing file, no such repo ...
        raise WeightsNotFoundError(
            f"could not get {where} from the Hugging Face hub ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).\n"
            f"Without network access (or with HF_HUB_OFFLINE=1 and no cached copy) download "
            f"{subfolder + '/' if subfolder else ''}{OFFICIAL_WEIGHTS} and {CONFIG_NAME} from "
            f"https://huggingface.co/{repo_id} on a machine that can reach it, then pass the local path: "
            f"ZoomLDM.from_official('/path/to/{OFFICIAL_WEIGHTS}') or ZoomLDM.load('/path/to/{OFFICIAL_WEIGHTS}') "
            f"(config.yaml beside it), or on the command line model.checkpoint=/path/to/{OFFICIAL_WEIGHTS}. "
            "For a gated repo, log in first (huggingface-cli login)."
        ) from err
