"""Model configs: the architecture dict ``{unet, vq, summarizer, diffusion}`` in both YAML formats.

Two formats describe one architecture (docs/ARCHITECTURE.md, "Model" and "Configs"):

- the official ZoomLDM YAML (``model: target: ldm.models.diffusion.ddpm.LatentDiffusion`` with
  ``unet_config`` / ``first_stage_config`` / ``cond_stage_config``), as released beside
  ``brca/weights.ckpt`` and written by ``save_official``;
- zoomfeat's native YAML (``name``, ``checkpoint`` and the sections ``unet:``, ``vq:``,
  ``summarizer:``, ``diffusion:`` with the official key names), as in ``conf/model/*.yaml`` and
  ``save_pretrained``'s ``config.yaml``.

:func:`read_config` reads either into one plain, complete, checked dict (the *architecture*);
:func:`official_config` and :func:`native_config_document` write it back. Each section has one
normaliser that fills defaults and refuses unknown keys (``unet.normalize_unet_config``,
``vq.normalize_vq_config``, :func:`normalize_summarizer_config`, :func:`normalize_diffusion_config`),
and :func:`normalize_arch` checks the widths that must agree across sections.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoomfeat.model import unet as unet_mod
from zoomfeat.model import vq as vq_mod
from zoomfeat.runtime.atomic import atomic_write_text
from zoomfeat.runtime.errors import ConfigError, WeightsNotFoundError
from zoomfeat.runtime.units import NUM_MAGS

#: the config file beside a checkpoint (official and native layouts alike)
CONFIG_NAME = "config.yaml"
#: the architecture sections of a native config (``conf/model/*.yaml``)
ARCH_SECTIONS = ("unet", "vq", "summarizer", "diffusion")
#: the model built for tests and the demo (a seeded random init is always allowed for it)
TINY = "tiny"


@dataclass
class ModelSection:
    """``conf/model/{name}.yaml`` (the Hydra group ``model=``): which ZoomLDM, and its weights.

    The entry points' config schemas nest this as their ``model`` section; the architecture
    sections keep the official key names and are checked by :func:`normalize_arch` when given.
    """

    #: ZoomLDM config name (zoomldm_brca | tiny) or a config YAML path
    name: str = "zoomldm_brca"
    #: native dir (save_pretrained) | official weights.ckpt | hub id; null = none
    checkpoint: str | None = None
    #: UNet architecture (official unet_config.params keys); empty: those of conf/model/{name}.yaml
    unet: dict[str, Any] = field(default_factory=dict)
    #: VQ-f4 first stage (official first_stage_config.params, ddconfig flattened)
    vq: dict[str, Any] = field(default_factory=dict)
    #: SSL summarizer (official cond_stage_config.params)
    summarizer: dict[str, Any] = field(default_factory=dict)
    #: diffusion schedule (timesteps, linear_start, linear_end, beta_schedule, parameterization, scale_factor)
    diffusion: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sections = self.sections()
        if sections:
            try:
                normalize_arch(sections)
            except (KeyError, TypeError, ValueError) as err:
                raise ConfigError(f"model (conf/model/{self.name}.yaml): {err}") from err

    def sections(self) -> dict[str, dict[str, Any]]:
        """The architecture sections that are set (plain dicts)."""
        return {k: dict(getattr(self, k)) for k in ARCH_SECTIONS if getattr(self, k)}

    def source(self) -> str | dict[str, Any]:
        """What :func:`read_config` / ``ZoomLDM.load(config=...)`` take: the name, or the sections."""
        sections = self.sections()
        return {"name": self.name, **sections} if sections else self.name

    @property
    def is_tiny(self) -> bool:
        return self.name == TINY


SUMMARIZER_DEFAULTS: dict[str, Any] = {
    "input_channels": 1024,
    "hidden_channels": 512,
    "output_channels": 512,
    "num_layers": 12,
    "num_heads": 8,
    "vit_mlp_dim": 2048,
    "num_mags": NUM_MAGS,
    "p_uncond": 0.1,
}
SUMMARIZER_IGNORED = ("feat_key", "mag_key")
#: official key spelling -> native key (the official ``EmbeddingViT2`` names the levels ``mag_levels``;
#: the released NAIP config sets ``mag_levels: 4``)
SUMMARIZER_ALIASES = {"mag_levels": "num_mags"}
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
    """Official ``cond_stage_config.params`` (or the native ``summarizer:`` section) -> complete dict.

    ``feat_key``/``mag_key`` (official batch keys) are ignored; the official ``mag_levels`` is
    ``num_mags``; other unknown keys are refused.
    """
    params = dict(params)
    for official, native in SUMMARIZER_ALIASES.items():
        if official in params:
            value = params.pop(official)
            if native in params and int(params[native]) != int(value):
                raise ConfigError(
                    f"summarizer config sets both {official}={value} and {native}={params[native]}; keep one"
                )
            params[native] = value
    unknown = sorted(set(params) - set(SUMMARIZER_DEFAULTS) - set(SUMMARIZER_IGNORED))
    if unknown:
        raise ConfigError(f"unsupported summarizer config keys: {unknown}")
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
    """The schedule keys of the official ``model.params`` (or the native ``diffusion:`` section)."""
    unknown = sorted(set(params) - set(DIFFUSION_DEFAULTS))
    if unknown:
        raise ConfigError(f"unsupported diffusion config keys: {unknown}")
    cfg = {k: params.get(k, v) for k, v in DIFFUSION_DEFAULTS.items()}
    cfg["timesteps"] = int(cfg["timesteps"])
    for k in ("linear_start", "linear_end", "scale_factor"):
        cfg[k] = float(cfg[k])
    return cfg


def normalize_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Native architecture dict {unet, vq, summarizer, diffusion} -> complete, checked plain dict."""
    missing = [k for k in ("unet", "vq", "summarizer") if k not in arch]
    if missing:
        raise ConfigError(f"model config lacks section(s) {missing}")
    out = {
        "unet": unet_mod.normalize_unet_config(dict(arch["unet"])),
        "vq": vq_mod.normalize_vq_config(dict(arch["vq"])),
        "summarizer": normalize_summarizer_config(dict(arch["summarizer"])),
        "diffusion": normalize_diffusion_config(dict(arch.get("diffusion") or {})),
    }
    if out["unet"]["context_dim"] != out["summarizer"]["output_channels"]:
        raise ConfigError(
            f"UNet context_dim ({out['unet']['context_dim']}) must equal summarizer output_channels "
            f"({out['summarizer']['output_channels']})"
        )
    if out["unet"]["in_channels"] != out["vq"]["embed_dim"]:
        raise ConfigError(
            f"UNet in_channels ({out['unet']['in_channels']}) must equal VQ embed_dim ({out['vq']['embed_dim']})"
        )
    return out


def _target_ok(section: Mapping[str, Any], suffixes: tuple[str, ...], what: str) -> None:
    target = str(section.get("target", ""))
    if not target.endswith(suffixes):
        raise ConfigError(f"official config: {what} target {target!r} is not one of {list(suffixes)}")


def arch_from_official(d: Mapping[str, Any]) -> dict[str, Any]:
    """Official ZoomLDM YAML (model.target LatentDiffusion ...) -> native architecture dict."""
    model = d["model"]
    _target_ok(model, ("LatentDiffusion",), "model")
    p = model.get("params") or {}
    if p.get("conditioning_key", "crossattn") != "crossattn":
        raise ConfigError(f"official config: conditioning_key {p.get('conditioning_key')!r} is not supported")
    if p.get("scale_by_std", False):
        raise ConfigError(
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
    if s["num_mags"] != NUM_MAGS:
        cond["mag_levels"] = s["num_mags"]  # the official EmbeddingViT2 argument (it has no num_mags)
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
                raise WeightsNotFoundError(f"model config not found: {path}")
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
        raise ConfigError(f"{where}: a model config must be a mapping, got {type(data).__name__}")
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
        raise ConfigError(f"{where}: invalid ZoomLDM config: {err}") from err
    return name, arch


def native_config_document(
    name: str, arch: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict:
    """The native ``config.yaml`` document ``save_pretrained`` writes (``extra``: provenance)."""
    doc: dict[str, Any] = {"name": name, "checkpoint": None}
    doc.update(copy.deepcopy(dict(arch)))
    if extra:
        doc["zoomfeat"] = dict(extra)
    return doc


def write_yaml(doc: Mapping[str, Any], path: Path) -> None:
    """Write ``doc`` as YAML to ``path`` atomically (temp file, fsync, rename)."""
    atomic_write_text(path, yaml.safe_dump(_plain(dict(doc)), sort_keys=False))
