"""``ZoomLDM``: the VQ-f4 autoencoder, the conditional UNet, the SSL summarizer and the schedule.

Float32 parameters by default (the official ``use_fp16: true`` only made the official UNet cast its
activations to fp16 under CUDA autocast); use ``torch.autocast`` (bf16/fp16) and
``model.to(memory_format=torch.channels_last)`` on GPU for speed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from zoomfeat.model import checkpoint as ckpt
from zoomfeat.model import sampling
from zoomfeat.model import unet as unet_mod
from zoomfeat.model import vq as vq_mod
from zoomfeat.model.schedule import Schedule
from zoomfeat.model.summarizer import Summarizer, prepare_ssl_grid
from zoomfeat.runtime.provenance import config_hash, file_hash

log = logging.getLogger(__name__)

DEFAULT_TAPS = ("middle_block", "output_blocks.4")


class ZoomLDM(nn.Module):
    """ZoomLDM (CVPR 2025) with diffusers' ``VQModel`` and ``UNet2DConditionModel`` inside.

    Build it with :meth:`from_config` (random init), :meth:`from_official` (the released
    ``weights.ckpt`` layout), :meth:`from_pretrained` (a directory saved by :meth:`save_pretrained`
    or a model-hub id) or :meth:`load` (any of these).
    """

    def __init__(self, config: Mapping[str, Any], name: str = "custom"):
        super().__init__()
        arch = ckpt.normalize_arch(config)
        self.name = name
        self.config: dict[str, Any] = arch
        self.unet = unet_mod.build_unet(arch["unet"])
        self.vq = vq_mod.build_vq(arch["vq"], arch["diffusion"]["scale_factor"])
        self.summarizer = Summarizer(**arch["summarizer"])
        self.schedule = Schedule(**arch["diffusion"])
        self.checkpoint_id = "random-init"
        self.checkpoint_hash = "random-init:" + config_hash(arch)

    # ------------------------------------------------------------------------------------------
    # properties

    @property
    def ssl_channels(self) -> int:
        """Width of the SSL (UNI) embeddings the summarizer expects (1024 full-size, 32 tiny)."""
        return self.config["summarizer"]["input_channels"]

    @property
    def context_dim(self) -> int:
        return self.config["summarizer"]["output_channels"]

    @property
    def num_mags(self) -> int:
        return self.config["summarizer"]["num_mags"]

    @property
    def latent_channels(self) -> int:
        return self.config["unet"]["in_channels"]

    @property
    def latent_size(self) -> int:
        return self.config["unet"]["image_size"]

    @property
    def image_size(self) -> int:
        return self.latent_size * vq_mod.downsample_factor(self.config["vq"])

    @property
    def block_names(self) -> list[str]:
        """Valid tap names (official UNet block names, in execution order)."""
        return unet_mod.block_names(self.config["unet"])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_config(
        cls,
        name_or_yaml: str | Path | Mapping[str, Any] = "zoomldm_brca",
        seed: int | None = None,
        device: str | torch.device | None = None,
    ) -> ZoomLDM:
        """Random-init model from ``conf/model/<name>.yaml``, a YAML file (native or official) or a dict.

        ``device="meta"`` builds it without allocating memory (shapes and parameter counts only).
        """
        name, arch = ckpt.read_config(name_or_yaml)
        if device is not None and torch.device(device).type == "meta":
            with torch.device("meta"):
                model = cls(arch, name=name)
        else:
            with torch.random.fork_rng(devices=[], enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                model = cls(arch, name=name)
            if device is not None:
                model = model.to(device)
        model.checkpoint_hash = f"random-init:{config_hash({'arch': arch, 'seed': seed})}"
        return model.eval()

    @classmethod
    def _empty(cls, arch: Mapping[str, Any], name: str) -> ZoomLDM:
        with torch.device("meta"):
            return cls(arch, name=name)

    def _load_native(self, state: Mapping[str, torch.Tensor], source: str, copy: bool = True) -> None:
        """Assign a native state_dict (unet.*, vq.*, summarizer.*) to this (meta) model as float32
        contiguous tensors (``copy``: always fresh copies, e.g. to detach from a memory-mapped file)."""
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        ckpt.check_keys(
            state,
            expected,
            source,
            f"ZoomLDM '{self.name}' architecture",
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
            raise ckpt.CheckpointError(f"{source}: tensors left uninitialised: {left[:10]}")

    @classmethod
    def from_official(
        cls, ckpt_path: str | Path, config: str | Path | Mapping[str, Any] | None = None, ema: bool = True
    ) -> ZoomLDM:
        """Load the released layout (``brca/weights.ckpt``: a flat state_dict, .ckpt or .safetensors).

        ``config``: the official (or native) YAML, a config name or a dict; None -> the
        ``config.yaml`` beside the checkpoint, else "zoomldm_brca".  ``ema=True`` (default, what the
        official sampling uses) takes the ``model_ema.*`` UNet weights, ``ema=False`` the live ones.
        """
        path = Path(ckpt_path).expanduser()
        if config is None:
            beside = path.parent / ckpt.CONFIG_NAME
            config = beside if beside.is_file() else "zoomldm_brca"
            if not beside.is_file():
                log.info("no %s beside %s: using the built-in 'zoomldm_brca' config", ckpt.CONFIG_NAME, path)
        name, arch = ckpt.read_config(config)
        sd = ckpt.load_state_dict_file(path)
        model = cls._empty(arch, name)
        native = ckpt.convert_official_state_dict(sd, model, ema=ema, source=str(path))
        model._load_native(native, str(path))
        model.checkpoint_id = str(path)
        model.checkpoint_hash = file_hash(path) + ("" if ema else ":live")
        return model.eval()

    @classmethod
    def from_pretrained(
        cls,
        dir_or_hub_id: str | Path,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        ema: bool = True,
    ) -> ZoomLDM:
        """A directory written by :meth:`save_pretrained` (``model.safetensors`` + ``config.yaml``), a
        directory holding the released ``weights.ckpt`` + ``config.yaml``, or a model-hub id.

        Hub ids: ``"StonyBrook-CVLab/ZoomLDM"`` (subfolder ``brca`` by default), ``"owner/repo/subfolder"``
        or ``"hf://owner/repo"``; files go through huggingface_hub's cache (``HF_HUB_OFFLINE=1`` uses
        only the cache).
        """
        path = Path(str(dir_or_hub_id)).expanduser()
        if path.is_dir():
            if (path / ckpt.NATIVE_WEIGHTS).is_file():
                return cls._from_native(path / ckpt.CONFIG_NAME, path / ckpt.NATIVE_WEIGHTS, str(path))
            if (path / ckpt.OFFICIAL_WEIGHTS).is_file():
                return cls.from_official(path / ckpt.OFFICIAL_WEIGHTS, ema=ema)
            raise ckpt.WeightsNotFoundError(
                f"{path}: neither {ckpt.NATIVE_WEIGHTS} (save_pretrained) nor {ckpt.OFFICIAL_WEIGHTS} (released layout) here"
            )
        if path.exists():
            raise ckpt.WeightsNotFoundError(
                f"{path} is a file: use ZoomLDM.from_official(path) or ZoomLDM.load(path)"
            )
        hub = ckpt.parse_hub_id(str(dir_or_hub_id))
        if hub is None:
            raise ckpt.WeightsNotFoundError(f"no such directory, and not a model-hub id: {dir_or_hub_id}")
        repo, sub = hub
        if subfolder is not None:
            sub = subfolder or None
        cfg_path = ckpt.hub_file(repo, ckpt.CONFIG_NAME, sub, revision, cache_dir)
        with open(cfg_path) as f:
            doc = yaml.safe_load(f) or {}
        hub_id = f"{repo}/{sub}" if sub else repo
        if isinstance(doc, Mapping) and isinstance(doc.get("model"), Mapping):
            weights = ckpt.hub_file(repo, ckpt.OFFICIAL_WEIGHTS, sub, revision, cache_dir)
            model = cls.from_official(weights, config=cfg_path, ema=ema)
        else:
            weights = ckpt.hub_file(repo, ckpt.NATIVE_WEIGHTS, sub, revision, cache_dir)
            model = cls._from_native(cfg_path, weights, hub_id)
        model.checkpoint_id = hub_id
        return model

    @classmethod
    def _from_native(cls, cfg_path: Path, weights: Path, checkpoint_id: str) -> ZoomLDM:
        from safetensors.torch import load_file

        if not cfg_path.is_file():
            raise ckpt.WeightsNotFoundError(
                f"{cfg_path} is missing: save_pretrained writes it beside {weights.name}"
            )
        name, arch = ckpt.read_config(cfg_path)
        try:
            state = load_file(str(weights))
        except Exception as err:
            raise ckpt.CheckpointError(f"{weights}: not a readable safetensors file: {err}") from err
        model = cls._empty(arch, name)
        model._load_native(state, str(weights), copy=False)
        model.checkpoint_id = checkpoint_id
        model.checkpoint_hash = file_hash(weights)
        return model.eval()

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | None,
        config: str | Path | Mapping[str, Any] | None = "zoomldm_brca",
        allow_random_weights: bool = False,
        seed: int = 0,
        ema: bool = True,
    ) -> ZoomLDM:
        """One entry point: a native directory, an official ``.ckpt`` (``config.yaml`` beside it, else
        ``config``), a model-hub id, or None (seeded random weights when ``allow_random_weights``)."""
        config = config or "zoomldm_brca"
        if checkpoint is None or str(checkpoint).strip().lower() in ("", "none", "null"):
            if not allow_random_weights:
                raise ValueError(
                    "no ZoomLDM weights given. Pass checkpoint=<directory written by save_pretrained> | "
                    "</path/to/weights.ckpt in the released layout, with its config.yaml beside it> | "
                    f"<model-hub id, e.g. '{ckpt.HUB_ID}'> (command line: model.checkpoint=...), or set "
                    "allow_random_weights=true for a seeded random model (smoke tests only: its features mean nothing)."
                )
            return cls.from_config(config, seed=seed)
        path = Path(str(checkpoint)).expanduser()
        if path.is_dir():
            if (path / ckpt.NATIVE_WEIGHTS).is_file() or not (path / ckpt.OFFICIAL_WEIGHTS).is_file():
                return cls.from_pretrained(path, ema=ema)
            path = path / ckpt.OFFICIAL_WEIGHTS
        if path.is_file():
            if path.name == ckpt.NATIVE_WEIGHTS:
                return cls.from_pretrained(path.parent)
            beside = path.parent / ckpt.CONFIG_NAME
            return cls.from_official(path, config=beside if beside.is_file() else config, ema=ema)
        if ckpt.parse_hub_id(str(checkpoint)) is not None:
            try:
                return cls.from_pretrained(str(checkpoint), ema=ema)
            except ckpt.WeightsNotFoundError as err:
                raise ckpt.WeightsNotFoundError(
                    f"{err}\n(There is no local file or directory {path} either.)"
                ) from err
        raise ckpt.WeightsNotFoundError(
            f"checkpoint {checkpoint!s}: no such file or directory, and not a model-hub id"
        )

    # ------------------------------------------------------------------------------------------
    # saving

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.yaml`` (native format) into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        tmp = directory / (ckpt.NATIVE_WEIGHTS + ".tmp")
        save_file(
            state,
            str(tmp),
            metadata={
                "format": "pt",
                "zoomfeat_model": "zoomldm",
                "format_version": str(ckpt.NATIVE_FORMAT_VERSION),
            },
        )
        tmp.replace(directory / ckpt.NATIVE_WEIGHTS)
        extra = {
            "format_version": ckpt.NATIVE_FORMAT_VERSION,
            "source_checkpoint": self.checkpoint_id,
            "source_hash": self.checkpoint_hash,
        }
        ckpt.write_yaml(
            ckpt.native_config_document(self.name, self.config, extra), directory / ckpt.CONFIG_NAME
        )
        return directory

    def save_official(
        self,
        path: str | Path,
        ema_unet_state: Mapping[str, torch.Tensor] | None = None,
        ema_decay: float = 0.9999,
        ema_num_updates: int = 0,
    ) -> Path:
        """Write the released layout: ``path`` (torch.save of a flat dict of tensors) + ``config.yaml``
        (official format) beside it.  EMA entries come from ``ema_unet_state`` (native UNet names) if
        given, else from the live UNet."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = ckpt.to_official_state_dict(self, ema_unet_state, ema_decay, ema_num_updates)
        sd = type(sd)((k, v.detach().to("cpu")) for k, v in sd.items())
        tmp = path.with_name(path.name + ".tmp")
        torch.save(sd, tmp)
        tmp.replace(path)
        ckpt.write_yaml(ckpt.official_config(self.config), path.parent / ckpt.CONFIG_NAME)
        return path

    # ------------------------------------------------------------------------------------------
    # helpers

    @staticmethod
    def _like(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Input on the weight's device/dtype, channels_last if the model was converted to it."""
        x = x.to(device=weight.device, dtype=weight.dtype)
        if (
            weight.ndim == 4
            and weight.is_contiguous(memory_format=torch.channels_last)
            and not weight.is_contiguous()
        ):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _check_latent(self, x: torch.Tensor, what: str = "latent") -> None:
        if x.ndim != 4 or x.shape[1] != self.latent_channels:
            raise ValueError(f"{what} must be [B, {self.latent_channels}, h, w], got {tuple(x.shape)}")

    def _context(self, context: torch.Tensor, batch: int) -> torch.Tensor:
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(f"context must be [B, tokens, {self.context_dim}], got {tuple(context.shape)}")
        if context.shape[0] == 1 and batch != 1:
            context = context.expand(batch, -1, -1)
        if context.shape[0] != batch:
            raise ValueError(f"context batch {context.shape[0]} != latent batch {batch}")
        return context.to(device=self.unet.conv_in.weight.device, dtype=self.unet.conv_in.weight.dtype)

    def _timesteps(self, t: int | torch.Tensor, batch: int) -> torch.Tensor:
        return self.schedule._t(t, batch, self.unet.conv_in.weight.device)

    # ------------------------------------------------------------------------------------------
    # first stage

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], [B, 3, 256, 256] -> pre-quantisation latent [B, 3, 64, 64] (times scale_factor)."""
        if images.dtype == torch.uint8:
            raise TypeError("encode expects float images in [-1, 1] (e.g. x.float() / 127.5 - 1), got uint8")
        f = vq_mod.downsample_factor(self.config["vq"])
        if (
            images.ndim != 4
            or images.shape[1] != self.config["vq"]["in_channels"]
            or images.shape[-1] % f
            or images.shape[-2] % f
        ):
            raise ValueError(
                f"images must be [B, 3, H, W] with H, W multiples of {f}, got {tuple(images.shape)}"
            )
        x = self._like(images, self.vq.encoder.conv_in.weight)
        z = self.vq.encode(x).latents
        sf = self.config["diffusion"]["scale_factor"]
        return z if sf == 1.0 else z * sf

    def quantize(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-code quantisation: (quantised latents, code indices [B, h, w])."""
        self._check_latent(latents)
        sf = self.config["diffusion"]["scale_factor"]
        z = latents if sf == 1.0 else latents / sf
        return vq_mod.quantize(self.vq, self._like(z, self.vq.post_quant_conv.weight))

    def decode(self, latents: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Latent [B, 3, 64, 64] -> image [B, 3, 256, 256] in about [-1, 1]; quantises first (official)."""
        self._check_latent(latents)
        sf = self.config["diffusion"]["scale_factor"]
        z = latents if sf == 1.0 else latents / sf
        z = self._like(z, self.vq.post_quant_conv.weight)
        return self.vq.decode(z, force_not_quantize=not quantize).sample

    # ------------------------------------------------------------------------------------------
    # conditioning

    def condition(self, ssl_grid: torch.Tensor, mag: int | torch.Tensor) -> torch.Tensor:
        """Raw SSL (UNI) grid [B, C, h, w] (or [B, C] for a 1x1 grid) + magnification index -> context [B, 65, D].

        Grids larger than 8x8 are average-pooled to 8x8, then every position is standardised over
        channels (the official dataloader's preprocessing).  ``mag``: 0=20x 1=10x 2=5x 3=2.5x
        4=1.25x 5=0.625x 6=0.3125x 7=0.15625x; a tile at index m is conditioned on the 2^m x 2^m
        grid of 20x embeddings it covers.
        """
        if ssl_grid.ndim == 2:
            ssl_grid = ssl_grid[:, :, None, None]
        if ssl_grid.ndim != 4:
            raise ValueError(f"SSL grid must be [B, C, h, w] or [B, C], got shape {tuple(ssl_grid.shape)}")
        if ssl_grid.shape[1] != self.ssl_channels:
            raise ValueError(
                f"SSL grid has {ssl_grid.shape[1]} channels but this model expects {self.ssl_channels} "
                f"(the embedding width of its SSL encoder, e.g. 1024 for UNI); grid shape {tuple(ssl_grid.shape)}"
            )
        w = self.summarizer.dim_reduce.weight
        x = prepare_ssl_grid(ssl_grid.to(w.device))
        return self.summarizer(x.to(w.dtype), mag)

    def null_context(self, batch: int = 1) -> torch.Tensor:
        """Unconditional context (all zeros), as used for classifier-free guidance."""
        w = self.summarizer.dim_reduce.weight
        return torch.zeros(batch, 65, self.context_dim, device=w.device, dtype=w.dtype)

    # ------------------------------------------------------------------------------------------
    # diffusion

    def q_sample(
        self,
        z0: torch.Tensor,
        t: int | torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Forward noising with the official float32 schedule (noise drawn from ``generator`` if None)."""
        if noise is None:
            dev = generator.device if generator is not None else z0.device
            noise = torch.randn(z0.shape, generator=generator, device=dev, dtype=z0.dtype).to(z0.device)
        return self.schedule.q_sample(z0, t, noise)

    def eps(self, x_t: torch.Tensor, t: int | torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """UNet noise prediction (the full diffusers forward)."""
        self._check_latent(x_t, "x_t")
        x = self._like(x_t, self.unet.conv_in.weight)
        return self.unet(
            x, self._timesteps(t, x.shape[0]), encoder_hidden_states=self._context(context, x.shape[0])
        ).sample

    def taps(
        self,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        context: torch.Tensor,
        names: Sequence[str] | str = DEFAULT_TAPS,
    ) -> dict[str, torch.Tensor]:
        """{official block name: activation [B, C, h, w]}; the forward stops after the deepest one."""
        names = unet_mod.check_tap_names(self.config["unet"], names)
        self._check_latent(x_t, "x_t")
        x = self._like(x_t, self.unet.conv_in.weight)
        return unet_mod.forward_taps(
            self.unet, x, self._timesteps(t, x.shape[0]), self._context(context, x.shape[0]), names
        )

    def tap_channels(self, names: Sequence[str] | str = DEFAULT_TAPS) -> dict[str, int]:
        """{tap name: channels} from the config, without running anything."""
        names = unet_mod.check_tap_names(self.config["unet"], names)
        chans = unet_mod.block_channels(self.config["unet"])
        return {n: chans[n] for n in names}

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        steps: int = 50,
        guidance: float = 2.0,
        sampler: str = "ddim",
        x_T: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        uncond: torch.Tensor | None = None,
        return_intermediates: bool = False,
        progress: bool = False,
    ):
        """Sample latents with the official DDIM or PLMS sampler and classifier-free guidance.

        ``uncond`` defaults to zeros (the official unconditional context).  Returns the latent
        [B, C, h, w] (decode it with :meth:`decode`), or (latent, intermediates) when
        ``return_intermediates``.
        """
        w = self.unet.conv_in.weight
        b = context.shape[0]
        context = self._context(context, b)
        uncond = torch.zeros_like(context) if uncond is None else self._context(uncond, b)
        if x_T is None:
            dev = generator.device if generator is not None else w.device
            shape = (b, self.latent_channels, self.latent_size, self.latent_size)
            x_T = torch.randn(shape, generator=generator, device=dev, dtype=torch.float32)
        self._check_latent(x_T, "x_T")
        x_T = x_T.to(w.device, torch.float32)

        def eps_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            x = self._like(x, w)
            return self.unet(x, t, encoder_hidden_states=c).sample

        ac = self.schedule.alphas_cumprod
        if sampler == "ddim":
            out, inter = sampling.sample_ddim(
                eps_fn, x_T, context, uncond, ac, steps, guidance, eta, generator, progress
            )
        elif sampler == "plms":
            if eta != 0.0:
                raise ValueError("the PLMS sampler requires eta=0")
            out, inter = sampling.sample_plms(eps_fn, x_T, context, uncond, ac, steps, guidance, progress)
        else:
            raise ValueError(f"unknown sampler {sampler!r}: use 'ddim' or 'plms'")
        return (out, inter) if return_intermediates else out
