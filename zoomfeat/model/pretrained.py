"""Building, loading and saving ZoomLDM: every constructor, the model hub, both file layouts.

:class:`PretrainedMixin` gives ``ZoomLDM`` its constructors and writers (diffusers' ``ModelMixin``
style); ``ZoomLDM`` itself only holds the modules and the forward passes.

Two layouts on disk (docs/ARCHITECTURE.md, "Model"):

- *official*: ``weights.ckpt`` (the released flat state_dict, see :mod:`zoomfeat.model.official`)
  + the official ``config.yaml`` beside it -- :meth:`~PretrainedMixin.from_official`,
  :meth:`~PretrainedMixin.save_official`;
- *native*: ``model.safetensors`` (``unet.*``, ``vq.*``, ``summarizer.*``) + a native
  ``config.yaml`` -- :meth:`~PretrainedMixin.from_pretrained`, :meth:`~PretrainedMixin.save_pretrained`.

Either may live in a model-hub repo (``StonyBrook-CVLab/ZoomLDM``, subfolder ``brca``), fetched
through :mod:`zoomfeat.runtime.weights` (huggingface_hub's cache; ``HF_HUB_OFFLINE=1`` uses only
the cache). Weights are read with ``torch.load(weights_only=True)`` or safetensors: nothing in a
file is ever executed. :meth:`~PretrainedMixin.load` is the one entry point the pipelines use.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

from zoomfeat.model import official
from zoomfeat.model.config import (
    CONFIG_NAME,
    native_config_document,
    official_config,
    read_config,
    write_yaml,
)
from zoomfeat.runtime import weights as rw
from zoomfeat.runtime.atomic import atomic_path
from zoomfeat.runtime.errors import ConfigError, WeightsError, WeightsNotFoundError
from zoomfeat.runtime.provenance import config_hash, file_hash
from zoomfeat.runtime.seeding import seeded

if TYPE_CHECKING:
    from zoomfeat.model.schedule import Schedule
    from zoomfeat.model.summarizer import Summarizer

log = logging.getLogger(__name__)

HUB_ID = "StonyBrook-CVLab/ZoomLDM"
HUB_SUBFOLDER = "brca"
#: the subfolder used when a hub id names none (lower-case repo id -> subfolder)
HUB_DEFAULT_SUBFOLDERS = {HUB_ID.lower(): HUB_SUBFOLDER}
OFFICIAL_WEIGHTS = "weights.ckpt"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_FORMAT_VERSION = 1
DEFAULT_CONFIG = "zoomldm_brca"

#: a checkpoint or config that cannot be loaded (the shared runtime's WeightsError)
CheckpointError = WeightsError


# ================================================================================================
# model hub


def parse_hub_id(s: str) -> tuple[str, str | None] | None:
    """``owner/name[/subfolder]`` (optionally ``hf://``) -> (repo_id, subfolder); None if not hub-like.

    ``StonyBrook-CVLab/ZoomLDM`` without a subfolder means its ``brca`` folder.
    """
    return rw.parse_hub_id(s, HUB_DEFAULT_SUBFOLDERS)


def hub_file(
    repo_id: str,
    filename: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """One file of a ZoomLDM hub repo (cache first); a WeightsNotFoundError saying how to pass a path."""
    folder = f"{subfolder}/" if subfolder else ""
    hint = (
        f"fetch {folder}{OFFICIAL_WEIGHTS} and {folder}{CONFIG_NAME}, put them side by side and use "
        f"ZoomLDM.from_official('/path/to/{OFFICIAL_WEIGHTS}') or ZoomLDM.load('/path/to/{OFFICIAL_WEIGHTS}') "
        f"({CONFIG_NAME} beside it), or on the command line model.checkpoint=/path/to/{OFFICIAL_WEIGHTS}."
    )
    return rw.hub_file(
        repo_id,
        filename,
        subfolder=subfolder,
        revision=revision,
        cache_dir=cache_dir,
        what=f"ZoomLDM {filename}",
        local_hint=hint,
    )


# ================================================================================================
# constructors and writers


if TYPE_CHECKING:
    # what the mixin relies on, for the type checker: an nn.Module built as cls(arch, name=name)
    _MixinBase = nn.Module
else:
    _MixinBase = object


class PretrainedMixin(_MixinBase):
    """Constructors (:meth:`from_config`, :meth:`from_official`, :meth:`from_pretrained`,
    :meth:`load`) and writers (:meth:`save_pretrained`, :meth:`save_official`) of ``ZoomLDM``.

    The class mixed into must be an ``nn.Module`` built as ``cls(arch, name=name)`` with the
    attributes :mod:`zoomfeat.model.official` reads (``config``, ``unet``, ``vq``, ``summarizer``,
    ``schedule``) and ``checkpoint_id`` / ``checkpoint_hash`` (provenance written into bags).
    """

    # the attributes of the class mixed into (declared for the type checker)
    name: str
    config: dict[str, Any]
    unet: Any  # diffusers UNet2DConditionModel
    vq: Any  # diffusers VQModel
    summarizer: Summarizer
    schedule: Schedule
    checkpoint_id: str
    checkpoint_hash: str

    # ---- build ---------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        name_or_yaml: str | Path | Mapping[str, Any] = DEFAULT_CONFIG,
        seed: int | None = None,
        device: str | torch.device | None = None,
    ):
        """Random-init model from ``conf/model/<name>.yaml``, a YAML file (native or official) or a dict.

        Args:
            name_or_yaml: config name, YAML path or architecture mapping.
            seed: seeds the init without disturbing the caller's RNG (None: the global RNG).
            device: where to build; ``"meta"`` allocates nothing (shapes and parameter counts only).
        """
        name, arch = read_config(name_or_yaml)
        if device is not None and torch.device(device).type == "meta":
            model = cls._empty(arch, name)
        else:
            model = cls(arch, name=name) if seed is None else seeded(lambda: cls(arch, name=name), seed)
            if device is not None:
                model = model.to(device)
        model.checkpoint_hash = f"random-init:{config_hash({'arch': arch, 'seed': seed})}"
        return model.eval()

    @classmethod
    def _empty(cls, arch: Mapping[str, Any], name: str):
        """The model on the meta device: every tensor is then assigned from a file."""
        with torch.device("meta"):
            return cls(arch, name=name)

    def _load_native(self, state: Mapping[str, torch.Tensor], source: str, copy: bool = True) -> None:
        """Assign a native state_dict (``unet.*``, ``vq.*``, ``summarizer.*``) to this (meta) model.

        Tensors become float32 (integers keep their type) and contiguous; ``copy``: always fresh
        copies (e.g. to detach from a memory-mapped file).
        """
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        official.check_keys(
            state,
            expected,
            source=source,
            what=f"ZoomLDM '{self.name}' architecture",
            hint="  Is the config right? (the config.yaml saved with these weights)",
        )
        tensors = {}
        for k, v in state.items():
            dtype = torch.float32 if v.is_floating_point() else v.dtype
            tensors[k] = v.to(dtype=dtype, memory_format=torch.contiguous_format, copy=copy)
        self.load_state_dict(tensors, strict=True, assign=True)
        self.schedule.reset_buffers()
        left = [n for n, t in list(self.named_parameters()) + list(self.named_buffers()) if t.is_meta]
        if left:  # pragma: no cover - would be a bug in the key mapping
            raise WeightsError(f"{source}: tensors left uninitialised: {left[:10]}")

    # ---- load ----------------------------------------------------------------------------------

    @classmethod
    def from_official(
        cls, ckpt_path: str | Path, config: str | Path | Mapping[str, Any] | None = None, ema: bool = True
    ):
        """Load the released layout (``brca/weights.ckpt``: a flat state_dict, .ckpt or .safetensors).

        Args:
            ckpt_path: the weight file.
            config: the official (or native) YAML, a config name or a dict; None -> the
                ``config.yaml`` beside the checkpoint, else ``zoomldm_brca``.
            ema: take the ``model_ema.*`` UNet weights (default, what the official sampling
                uses); False: the live ones.
        """
        path = Path(ckpt_path).expanduser()
        if config is None:
            beside = path.parent / CONFIG_NAME
            config = beside if beside.is_file() else DEFAULT_CONFIG
            if not beside.is_file():
                log.info("no %s beside %s: using the built-in '%s' config", CONFIG_NAME, path, DEFAULT_CONFIG)
        name, arch = read_config(config)
        sd = rw.load_state_dict_file(path)
        model = cls._empty(arch, name)
        native = official.convert_official_state_dict(sd, model, ema=ema, source=str(path))
        model._load_native(native, str(path))
        model.checkpoint_id = str(path)
        model.checkpoint_hash = file_hash(path) + ("" if ema else ":live")
        return model.eval()

    @classmethod
    def from_pretrained(
        cls,
        dir_or_hub_id: str | Path,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        ema: bool = True,
    ):
        """A directory written by :meth:`save_pretrained` (``model.safetensors`` + ``config.yaml``), a
        directory holding the released ``weights.ckpt`` + ``config.yaml``, or a model-hub id.

        Hub ids: ``"StonyBrook-CVLab/ZoomLDM"`` (subfolder ``brca`` by default), ``"owner/repo/subfolder"``
        or ``"hf://owner/repo"``; ``subfolder``, ``revision``, ``cache_dir`` as huggingface_hub's.
        """
        path = Path(str(dir_or_hub_id)).expanduser()
        if path.is_dir():
            if (path / NATIVE_WEIGHTS).is_file():
                return cls._from_native(path / CONFIG_NAME, path / NATIVE_WEIGHTS, str(path))
            if (path / OFFICIAL_WEIGHTS).is_file():
                return cls.from_official(path / OFFICIAL_WEIGHTS, ema=ema)
            raise WeightsNotFoundError(
                f"{path}: neither {NATIVE_WEIGHTS} (save_pretrained) nor {OFFICIAL_WEIGHTS} (released layout) here"
            )
        if path.exists():
            raise WeightsNotFoundError(
                f"{path} is a file: use ZoomLDM.from_official(path) or ZoomLDM.load(path)"
            )
        hub = parse_hub_id(str(dir_or_hub_id))
        if hub is None:
            raise WeightsNotFoundError(f"no such directory, and not a model-hub id: {dir_or_hub_id}")
        repo, sub = hub
        if subfolder is not None:
            sub = subfolder or None
        cfg_path = hub_file(repo, CONFIG_NAME, subfolder=sub, revision=revision, cache_dir=cache_dir)
        with open(cfg_path) as f:
            doc = yaml.safe_load(f) or {}
        hub_id = f"{repo}/{sub}" if sub else repo
        if isinstance(doc, Mapping) and isinstance(doc.get("model"), Mapping):
            weights = hub_file(repo, OFFICIAL_WEIGHTS, subfolder=sub, revision=revision, cache_dir=cache_dir)
            model = cls.from_official(weights, config=cfg_path, ema=ema)
        else:
            weights = hub_file(repo, NATIVE_WEIGHTS, subfolder=sub, revision=revision, cache_dir=cache_dir)
            model = cls._from_native(cfg_path, weights, hub_id)
        model.checkpoint_id = hub_id
        return model

    @classmethod
    def _from_native(cls, cfg_path: Path, weights: Path, checkpoint_id: str):
        if not cfg_path.is_file():
            raise WeightsNotFoundError(
                f"{cfg_path} is missing: save_pretrained writes it beside {weights.name}"
            )
        name, arch = read_config(cfg_path)
        state = rw.load_state_dict_file(weights)
        model = cls._empty(arch, name)
        model._load_native(state, str(weights), copy=False)
        model.checkpoint_id = checkpoint_id
        model.checkpoint_hash = file_hash(weights)
        return model.eval()

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | None,
        *,
        config: str | Path | Mapping[str, Any] | None = DEFAULT_CONFIG,
        allow_random_weights: bool = False,
        seed: int = 0,
        ema: bool = True,
    ):
        """One entry point for every source of weights.

        Args:
            checkpoint: a native directory, an official ``.ckpt`` (``config.yaml`` beside it, else
                ``config``), a model-hub id, or None / "none" (seeded random weights).
            config: the architecture when the checkpoint carries none (and for random weights).
            allow_random_weights: allow ``checkpoint=None`` (smoke tests only).
            seed: seed of the random weights. ema: as :meth:`from_official`.
        """
        config = config or DEFAULT_CONFIG
        if checkpoint is None or str(checkpoint).strip().lower() in ("", "none", "null"):
            if not allow_random_weights:
                raise ConfigError(
                    "no ZoomLDM weights given. Pass checkpoint=<directory written by save_pretrained> | "
                    "</path/to/weights.ckpt in the released layout, with its config.yaml beside it> | "
                    f"<model-hub id, e.g. '{HUB_ID}'> (command line: model.checkpoint=...), or set "
                    "allow_random_weights=true for a seeded random model (smoke tests only: its features mean nothing)."
                )
            return cls.from_config(config, seed=seed)
        path = Path(str(checkpoint)).expanduser()
        if path.is_dir():
            if (path / NATIVE_WEIGHTS).is_file() or not (path / OFFICIAL_WEIGHTS).is_file():
                return cls.from_pretrained(path, ema=ema)
            path = path / OFFICIAL_WEIGHTS
        if path.is_file():
            if path.name == NATIVE_WEIGHTS:
                return cls.from_pretrained(path.parent)
            beside = path.parent / CONFIG_NAME
            return cls.from_official(path, config=beside if beside.is_file() else config, ema=ema)
        if parse_hub_id(str(checkpoint)) is not None:
            try:
                return cls.from_pretrained(str(checkpoint), ema=ema)
            except WeightsNotFoundError as err:
                raise WeightsNotFoundError(
                    f"{err}\n(There is no local file or directory {path} either.)"
                ) from err
        raise WeightsNotFoundError(
            f"checkpoint {checkpoint!s}: no such file or directory, and not a model-hub id"
        )

    # ---- save ----------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.yaml`` (native format) into ``directory`` atomically."""
        from safetensors.torch import save_file

        directory = Path(directory).expanduser()
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": "pt", "zoomfeat_model": "zoomldm", "format_version": str(NATIVE_FORMAT_VERSION)}
        with atomic_path(directory / NATIVE_WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata=metadata)
        extra = {
            "format_version": NATIVE_FORMAT_VERSION,
            "source_checkpoint": self.checkpoint_id,
            "source_hash": self.checkpoint_hash,
        }
        write_yaml(native_config_document(self.name, self.config, extra), directory / CONFIG_NAME)
        return directory

    def save_official(
        self,
        path: str | Path,
        ema_unet_state: Mapping[str, torch.Tensor] | None = None,
        ema_decay: float = 0.9999,
        ema_num_updates: int = 0,
    ) -> Path:
        """Write the released layout: ``path`` (torch.save of a flat dict of tensors) + ``config.yaml``
        (official format) beside it, both atomically.

        Args:
            ema_unet_state: the ``model_ema.*`` entries under native UNet names (e.g. the trainer's
                EMA copy); None: the live UNet. ema_decay, ema_num_updates: the EMA bookkeeping.
        """
        path = Path(path).expanduser()
        sd = official.to_official_state_dict(self, ema_unet_state, ema_decay, ema_num_updates)
        sd = type(sd)((k, v.detach().to("cpu")) for k, v in sd.items())
        with atomic_path(path) as tmp:
            torch.save(sd, tmp)
        write_yaml(official_config(self.config), path.parent / CONFIG_NAME)
        return path
