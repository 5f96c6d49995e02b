"""The two models of feature extraction, loaded once, and the three calls the pipeline makes on them.

(docs/ARCHITECTURE.md, "Feature recipe".) For a tile ``x`` (uint8, 256 px) conditioned on a grid
``g`` of UNI embeddings at magnification index ``m``:

- UNI: ``u = UNI(x)``, the class token (D_uni = 1024; 32 for the tiny encoder);
- ZoomLDM: ``c = Summarizer(g, m)`` (65 context tokens), ``z0 = VQ.encode(x)`` (the pre-quant latent,
  3 x 64 x 64), ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps`` with the tile's own noise ``eps``,
  then the UNet run up to the deepest tap; each tap's output is globally average-pooled over
  (h, w) and the taps are concatenated: ``f = concat_k mean_hw(tap_k(z_t, t, c))``, averaged over
  ``ensemble`` independent draws of ``eps``.

The ZoomLDM needs ``Summarizer.input_channels == D_uni``: the BRCA model goes with UNI, the tiny
model with the tiny encoder; any other pairing is refused before the 300M-parameter UNI is built.
"""

from __future__ import annotations

from typing import Any

import torch

from zoomfeat.features.config import ExtractConfig
from zoomfeat.runtime.device import autocast
from zoomfeat.runtime.errors import ConfigError

_MODEL_CACHE: dict[tuple, tuple[Any, Any]] = {}


def load_models(cfg: ExtractConfig, device: torch.device) -> tuple[Any, Any]:
    """(ZoomLDM, encoder) in eval mode on ``device``; the last pair is cached per process.

    Raises:
        ConfigError: the model is conditioned on another embedding width than the encoder gives.
        WeightsError: weights missing or unreadable (from the model and encoder loaders).
    """
    key = (cfg.model.name, cfg.model.checkpoint, cfg.encoder.name, cfg.encoder.checkpoint,
           cfg.allow_random_weights, str(device), cfg.compile)  # fmt: skip
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    _MODEL_CACHE.clear()
    from zoomfeat.encoders import EMBED_DIM, build_encoder
    from zoomfeat.model import ZoomLDM

    # The tiny configs exist for tests and the demo: a seeded random init is always fine there.
    model = ZoomLDM.load(
        cfg.model.checkpoint,
        config=cfg.model.name,
        allow_random_weights=cfg.allow_random_weights or cfg.model.name == "tiny",
        seed=0,
    )

    def check(embed_dim: int) -> None:
        if int(model.ssl_channels) != int(embed_dim):
            raise ConfigError(
                f"model '{cfg.model.name}' is conditioned on {model.ssl_channels}-channel SSL grids but "
                f"encoder '{cfg.encoder.name}' gives {embed_dim}-d embeddings: use model=zoomldm_brca with "
                "encoder=uni, or model=tiny with encoder=tiny"
            )

    if cfg.encoder.name in EMBED_DIM:
        check(EMBED_DIM[cfg.encoder.name])  # before building a 300M-parameter encoder for nothing
    encoder = build_encoder(
        cfg.encoder.name, cfg.encoder.checkpoint, allow_random_weights=cfg.allow_random_weights
    )
    check(encoder.embed_dim)
    model = model.eval().requires_grad_(False).to(device)
    encoder = encoder.eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        for m in (model.vq, model.unet):
            m.to(memory_format=torch.channels_last)
    if cfg.compile:
        for m in compile_targets(model, encoder):
            m.compile()
    _MODEL_CACHE[key] = (model, encoder)
    return model, encoder


def compile_targets(model, encoder) -> list[torch.nn.Module]:
    """The modules the pipeline actually calls, for ``torch.compile`` (``compile=true``).

    ``model.encode`` calls the VQ encoder (not ``VQModel.forward``) and ``model.taps`` runs the
    UNet block by block up to the deepest tap (not ``UNet2DConditionModel.forward``), so the
    blocks are compiled one by one.
    """
    unet = model.unet
    return [encoder, model.summarizer, model.vq.encoder, model.vq.quant_conv, unet.conv_in, unet.time_embedding,
            *unet.down_blocks, unet.mid_block, *unet.up_blocks]  # fmt: skip


class FeatureModels:
    """ZoomLDM + encoder on one device with one recipe (timestep, taps, precision).

    Attributes:
        tap_dims: ``{tap: channels}`` in ``taps`` order; ``dims``: ``{feature_set: D}`` of the six sets.
        latent_shape: (C, h, w) of one tile's VQ latent (the shape of its noise).
    """

    def __init__(self, cfg: ExtractConfig, device: torch.device) -> None:
        self.device = device
        self.precision = cfg.precision
        self.timestep = int(cfg.features.timestep)
        self.taps = list(cfg.features.taps)
        self.model, self.encoder = load_models(cfg, device)
        tap_dims = self.model.tap_channels(self.taps)  # validates the names without running
        self.tap_dims = {name: int(tap_dims[name]) for name in self.taps}
        dz, du = sum(self.tap_dims.values()), int(self.encoder.embed_dim)
        self.dims = {"zoomldm_20x": dz, "zoomldm_5x": dz, "zoomldm_fused": 2 * dz,
                     "uni_20x": du, "uni_5x": du, "uni_fused": 2 * du}  # fmt: skip
        down = self.model.image_size // self.model.latent_size  # VQ-f4
        self.latent_shape = (int(self.model.latent_channels), cfg.tile_px // down, cfg.tile_px // down)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder (UNI or tiny) class tokens.

        Args:
            images: uint8 (B, H, W, 3) tiles on the device.

        Returns:
            float32 (B, D_uni).
        """
        x = self.encoder.preprocess(images)
        with autocast(self.device, self.precision):
            return self.encoder(x).float()

    @torch.inference_mode()
    def contexts(self, grids: list[torch.Tensor], mags: list[int]) -> torch.Tensor:
        """Summarizer contexts for pieces of grids (one magnification index per piece).

        Args:
            grids: per piece, float (n_i, D_uni, h_i, w_i) UNI grids (1x1 for 20x, 4x4 for 5x).
            mags: per piece, its magnification index.

        Returns:
            float32 (sum n_i, 65, C_ctx), pieces in order; one Summarizer call per (shape, mag).
        """
        order: dict[tuple, list[int]] = {}
        for i, (g, m) in enumerate(zip(grids, mags)):
            order.setdefault((tuple(g.shape[1:]), m), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(grids)
        with autocast(self.device, self.precision):
            for (_, mag), idx in order.items():
                ctx = self.model.condition(torch.cat([grids[i] for i in idx]), mag).float()
                pos = 0
                for i in idx:
                    out[i] = ctx[pos : pos + len(grids[i])]
                    pos += len(grids[i])
        return torch.cat(out)

    @torch.inference_mode()
    def zoomldm_features(
        self, images: torch.Tensor, contexts: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Pooled tap features of tiles, averaged over the noise draws.

        Args:
            images: uint8 (B, H, W, 3) tiles on the device.
            contexts: float32 (B, 65, C_ctx) from :meth:`contexts`.
            noise: float32 (B, k, *latent_shape), k draws per tile.

        Returns:
            float32 (B, D_zoom), D_zoom = sum of the tap channels.
        """
        # uint8 NHWC -> float NCHW in [-1, 1]. The layout matters on CPU: torch's channels_last
        # GroupNorm CPU kernel is inaccurate (errors up to ~0.3 on the VQ encoder's first
        # GroupNorm for tiles with background, and batch-size dependent), so the CPU path feeds
        # NCHW-contiguous tensors. CUDA's GroupNorm makes its input contiguous itself, so
        # channels_last there only speeds up the convolutions.
        x = images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        t = torch.full((len(x),), self.timestep, dtype=torch.long, device=self.device)
        with autocast(self.device, self.precision):
            z0 = self.model.encode(x).float()
            total = None
            for j in range(noise.shape[1]):
                x_t = self.model.q_sample(z0, t, noise[:, j].to(z0.dtype))
                taps = self.model.taps(x_t, t, contexts, self.taps)
                feat = torch.cat([taps[name].float().mean(dim=(2, 3)) for name in self.taps], dim=1)
                total = feat if total is None else total + feat
        return total / noise.shape[1]
