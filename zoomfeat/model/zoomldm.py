"""``ZoomLDM``: the VQ-f4 autoencoder, the conditional UNet, the SSL summarizer and the schedule.

The maths (docs/ARCHITECTURE.md, "Model" and "Feature recipe"):

- first stage: ``z0 = E(x)``, the VQ encoder's *pre-quantisation* latent of an image
  x in [-1, 1]^{3x256x256} (scale_factor 1.0), z0 in R^{3x64x64}; ``D(z)`` quantises to the
  nearest code, then decodes;
- conditioning: ``c = S(g, m)``, the summarizer's 65 tokens from a UNI grid g (2^m x 2^m 20x
  embeddings, pooled to at most 8x8) and the magnification index m;
- forward noising: ``x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps``, eps ~ N(0, I), with the
  official float32 "linear" schedule (T = 1000);
- the UNet predicts eps: ``eps_theta(x_t, t, c)``; features are its block activations (taps),
  computed by a forward that stops after the deepest block asked for;
- sampling: DDIM / PLMS with classifier-free guidance ``e_u + s (e_c - e_u)``, e_u from c = 0.

Float32 parameters by default (the official ``use_fp16: true`` only made the official UNet cast its
activations to fp16 under CUDA autocast); use ``torch.autocast`` (bf16/fp16) and
``model.to(memory_format=torch.channels_last)`` on GPU for speed. Constructors, loading and saving
live in :mod:`zoomfeat.model.pretrained` (:class:`~zoomfeat.model.pretrained.PretrainedMixin`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from zoomfeat.model import sampling
from zoomfeat.model import unet as unet_mod
from zoomfeat.model import vq as vq_mod
from zoomfeat.model.callbacks import ProgressBar, StepCallback, chain
from zoomfeat.model.config import normalize_arch
from zoomfeat.model.pretrained import PretrainedMixin
from zoomfeat.model.schedule import Schedule
from zoomfeat.model.summarizer import Summarizer, prepare_ssl_grid
from zoomfeat.runtime.provenance import config_hash

DEFAULT_TAPS = ("middle_block", "output_blocks.4")


class ZoomLDM(PretrainedMixin, nn.Module):
    """ZoomLDM (CVPR 2025) with diffusers' ``VQModel`` and ``UNet2DConditionModel`` inside.

    Build it with :meth:`from_config` (random init), :meth:`from_official` (the released
    ``weights.ckpt`` layout), :meth:`from_pretrained` (a directory saved by :meth:`save_pretrained`
    or a model-hub id) or :meth:`load` (any of these).
    """

    def __init__(self, config: Mapping[str, Any], name: str = "custom"):
        nn.Module.__init__(self)  # PretrainedMixin has no state of its own
        arch = normalize_arch(config)
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
        channels (the official dataloader's preprocessing).  ``mag`` is a magnification *index*
        ``m`` (:data:`~zoomfeat.runtime.units.MagIndex`: magnification ``20 / 2**m``, 0=20x 2=5x
        ... 7=0.15625x, the table in :mod:`zoomfeat.runtime.units`), not a magnification; a tile
        at index m is conditioned on the 2^m x 2^m grid of 20x embeddings it covers
        (:func:`~zoomfeat.runtime.units.grid_side`).

        Args:
            ssl_grid: raw SSL embeddings [B, C, h, w] (or [B, C]), C = :attr:`ssl_channels`.
            mag: int or LongTensor [B] of magnification indices.

        Returns:
            The cross-attention context [B, 65, D], D = :attr:`context_dim`.
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
        """Forward noising ``x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise`` (official float32 schedule).

        Args:
            z0: latent [B, C, h, w]. t: int or LongTensor [B] in [0, 1000).
            noise: [B, C, h, w]; None: drawn from ``generator``.

        Returns:
            x_t [B, C, h, w].
        """
        if noise is None:
            dev = generator.device if generator is not None else z0.device
            noise = torch.randn(z0.shape, generator=generator, device=dev, dtype=z0.dtype).to(z0.device)
        return self.schedule.q_sample(z0, t, noise)

    def eps(self, x_t: torch.Tensor, t: int | torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """UNet noise prediction (the full diffusers forward).

        Args:
            x_t: noisy latent [B, C, h, w]. t: int or LongTensor [B].
            context: [B, 65, D] (or [1, 65, D], broadcast).

        Returns:
            eps [B, C, h, w].
        """
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
        """Activations of official UNet blocks; the forward stops after the deepest one asked for.

        Args:
            x_t, t, context: as :meth:`eps`.
            names: official block names (:attr:`block_names`), e.g. ``middle_block``.

        Returns:
            {name: activation [B, C_name, h_name, w_name]} in the order of ``names``.
        """
        names = unet_mod.check_tap_names(self.config["unet"], names)
        self._check_latent(x_t, "x_t")
        x = self._like(x_t, self.unet.conv_in.weight)
        return unet_mod.forward_taps(
            self.unet,
            x,
            timestep=self._timesteps(t, x.shape[0]),
            context=self._context(context, x.shape[0]),
            names=names,
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
        *,
        steps: int = 50,
        guidance: float = 2.0,
        sampler: str = "ddim",
        x_T: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        uncond: torch.Tensor | None = None,
        callback: StepCallback | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample latents with the official DDIM or PLMS sampler and classifier-free guidance.

        ``eps = eps_theta(x_t, t, uncond) + s (eps_theta(x_t, t, context) - eps_theta(x_t, t, uncond))``
        with s = ``guidance``; the updates are :func:`~zoomfeat.model.sampling.sample_ddim` /
        :func:`~zoomfeat.model.sampling.sample_plms` (docs/generation.md, "DDIM and PLMS").
        ``uncond`` defaults to zeros (the official unconditional context). ``callback(step, t,
        state)`` observes every step (:mod:`zoomfeat.model.callbacks`); ``progress`` shows a tqdm
        bar driven by the same hook. Returns the latent [B, C, h, w] (decode it with
        :meth:`decode`).
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
        if sampler not in ("ddim", "plms"):
            raise ValueError(f"unknown sampler {sampler!r}: use 'ddim' or 'plms'")
        if sampler == "plms" and eta != 0.0:
            raise ValueError("the PLMS sampler requires eta=0")

        def eps_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            x = self._like(x, w)
            return self.unet(x, t, encoder_hidden_states=c).sample

        ac = self.schedule.alphas_cumprod
        n_steps = len(sampling.ddim_timesteps(steps, ac.shape[0]))
        with ProgressBar(n_steps, sampler.upper(), disable=not progress) as bar:
            cb = chain(callback, bar if progress else None)
            if sampler == "ddim":
                return sampling.sample_ddim(
                    eps_fn,
                    x_T,
                    cond=context,
                    uncond=uncond,
                    alphas_cumprod=ac,
                    steps=steps,
                    guidance=guidance,
                    eta=eta,
                    generator=generator,
                    callback=cb,
                )
            return sampling.sample_plms(
                eps_fn,
                x_T,
                cond=context,
                uncond=uncond,
                alphas_cumprod=ac,
                steps=steps,
                guidance=guidance,
                callback=cb,
            )
