"""Compatibility names: the old ``zoomfeat.model.checkpoint`` module, split by job.

- configs: :mod:`zoomfeat.model.config` (``read_config``, ``normalize_arch``, ``official_config`` ...);
- the official layout <-> native modules: :mod:`zoomfeat.model.official`;
- loading, saving, the model hub: :mod:`zoomfeat.model.pretrained`;
- safe weight loading: :mod:`zoomfeat.runtime.weights`.

Import from those modules; this one only re-exports their names for existing callers.
"""

from __future__ import annotations

from zoomfeat.model.config import (
    CONFIG_NAME,
    DIFFUSION_DEFAULTS,
    SUMMARIZER_DEFAULTS,
    arch_from_official,
    native_config_document,
    normalize_arch,
    normalize_diffusion_config,
    normalize_summarizer_config,
    official_config,
    read_config,
    write_yaml,
)
from zoomfeat.model.official import (
    EMA_EXTRA,
    EMA_PREFIX,
    SUMMARIZER_PREFIX,
    UNET_PREFIX,
    VQ_PREFIX,
    check_keys,
    convert_official_state_dict,
    ema_key,
    official_layout,
    official_unet_names,
    official_vq_names,
    to_official_state_dict,
    unet_key_to_official,
    vq_key_to_official,
)
from zoomfeat.model.pretrained import (
    HUB_DEFAULT_SUBFOLDERS,
    HUB_ID,
    HUB_SUBFOLDER,
    NATIVE_FORMAT_VERSION,
    NATIVE_WEIGHTS,
    OFFICIAL_WEIGHTS,
    CheckpointError,
    hub_file,
    parse_hub_id,
)
from zoomfeat.runtime.errors import WeightsNotFoundError
from zoomfeat.runtime.weights import load_state_dict_file

__all__ = [
    "CONFIG_NAME",
    "DIFFUSION_DEFAULTS",
    "EMA_EXTRA",
    "EMA_PREFIX",
    "HUB_DEFAULT_SUBFOLDERS",
    "HUB_ID",
    "HUB_SUBFOLDER",
    "NATIVE_FORMAT_VERSION",
    "NATIVE_WEIGHTS",
    "OFFICIAL_WEIGHTS",
    "SUMMARIZER_DEFAULTS",
    "SUMMARIZER_PREFIX",
    "UNET_PREFIX",
    "VQ_PREFIX",
    "CheckpointError",
    "WeightsNotFoundError",
    "arch_from_official",
    "check_keys",
    "convert_official_state_dict",
    "ema_key",
    "hub_file",
    "load_state_dict_file",
    "native_config_document",
    "normalize_arch",
    "normalize_diffusion_config",
    "normalize_summarizer_config",
    "official_config",
    "official_layout",
    "official_unet_names",
    "official_vq_names",
    "parse_hub_id",
    "read_config",
    "to_official_state_dict",
    "unet_key_to_official",
    "vq_key_to_official",
    "write_yaml",
]
