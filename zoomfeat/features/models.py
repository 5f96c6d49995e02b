"""The models of one extraction pass, loaded once, and the calls the pipeline makes on them.

(docs/ARCHITECTURE.md, "Feature recipe".) For a tile ``x`` (uint8, 256 px) conditioned on a grid
``g`` of UNI embeddings at magnification index ``m``:

- an encoder family (``uni``, ``phikon``, ...): ``u = E(preprocess_E(x))``, the encoder's published
  output (UNI: the class token, D = 1024; 32 for the tiny encoder);
- ZoomLDM: ``c = Summarizer(g, m)`` (65 context tokens), ``z0 = VQ.encode(x)`` (the pre-quant latent,
  3 x 64 x 64), ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps_j`` with the tile's own noise draws
  ``eps_j``, then the UNet run up to the deepest tap; each recipe pools its taps and concatenates
  them, averaged over its ``ensemble`` draws (:mod:`zoomfeat.features.recipes`).

One pass serves many recipes and many encoders. The cost that is shared:

- *embedding jobs* (:attr:`FeatureModels.jobs`): every encoder family runs once per tile; the
  conditioning of the recipes reuses the conditioning encoder's family when its preprocessing is the
  one a recipe asks for (``cond_px`` 224 = UNI's resize), else a job ``cond@{px}`` runs the same
  encoder at that input size (UNI accepts 256 px: its ViT has a dynamic image size);
- the VQ encoding, once per tile for all recipes;
- the UNet, once per ``(timestep, cond_px)`` group and noise draw, up to the deepest tap of the group
  (:func:`~zoomfeat.features.recipes.forward_groups`). Stopping later does not change an earlier
  block's activation, so a recipe's features equal those of a run of that recipe alone.

The ZoomLDM needs ``Summarizer.input_channels == D_uni``: the BRCA model goes with UNI, the tiny
model with the tiny encoder; any other pairing is refused before the 300M-parameter UNI is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.recipes import POOLINGS, Recipe, forward_groups
from zoomfeat.runtime.device import autocast
from zoomfeat.runtime.errors import ConfigError

#: loaded models by identity (the ZoomLDM or one encoder); a new pass drops the entries it does not use
_MODEL_CACHE: dict[tuple, Any] = {}


def _zoomldm_key(cfg: ExtractConfig, device: torch.device) -> tuple:
    return (
        "zoomldm",
        cfg.model.name,
        cfg.model.checkpoint,
        cfg.allow_random_weights,
        str(device),
        cfg.compile,
    )


def build_zoomldm(cfg: ExtractConfig, device: torch.device) -> Any:
    """The ZoomLDM of ``cfg.model`` in eval mode on ``device`` (channels_last on CUDA; its called
    modules compiled with ``cfg.compile``).

    Raises:
        WeightsError: weights missing or unreadable; ConfigError: unknown model config.
    """
    from zoomfeat.model import ZoomLDM

    # The tiny configs exist for tests and the demo: a seeded random init is always fine there.
    model = ZoomLDM.load(
        cfg.model.checkpoint,
        config=cfg.model.name,
        allow_random_weights=cfg.allow_random_weights or cfg.model.name == "tiny",
        seed=0,
    )
    model = model.eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        for m in (model.vq, model.unet):
            m.to(memory_format=torch.channels_last)
    if cfg.compile:
        for m in compile_targets(model):
            m.compile()
    return model


def build_tile_encoder(
    name: str,
    *,
    checkpoint: str | None,
    allow_random_weights: bool,
    device: torch.device,
    compile_: bool = False,
) -> Any:
    """A registry encoder (:func:`zoomfeat.encoders.build_encoder`) in eval mode on ``device``, the
    whole module compiled with ``compile_`` (its preprocessing runs outside it)."""
    from zoomfeat.encoders import build_encoder

    enc = build_encoder(name, checkpoint, allow_random_weights=allow_random_weights)
    enc = enc.eval().requires_grad_(False).to(device)
    if compile_:
        enc.compile()
    return enc


def compile_targets(model: Any, encoder: Any = None) -> list[torch.nn.Module]:
    """The ZoomLDM modules the pipeline actually calls, for ``torch.compile`` (``compile=true``).

    ``model.encode`` calls the VQ encoder (not ``VQModel.forward``) and ``model.taps`` runs the
    UNet block by block up to the deepest tap (not ``UNet2DConditionModel.forward``), so the
    blocks are compiled one by one. Encoders are compiled whole (preprocessing runs outside).
    """
    unet = model.unet
    mods = [model.summarizer, model.vq.encoder, model.vq.quant_conv, unet.conv_in, unet.time_embedding,
            *unet.down_blocks, unet.mid_block, *unet.up_blocks]  # fmt: skip
    return ([encoder] if encoder is not None else []) + mods


def pool(act: torch.Tensor, pooling: str) -> torch.Tensor:
    """One tap's activation pooled to a vector (:data:`~zoomfeat.features.recipes.POOLINGS`).

    Args:
        act: float32 (B, C, h, w).
        pooling: ``mean`` | ``max`` | ``meanmax`` (mean then max) | ``grid2`` (the 2x2 quadrant means,
            quadrants row-major, each C wide; adaptive, so odd sizes split as
            :func:`torch.nn.functional.adaptive_avg_pool2d` does).

    Returns:
        float32 (B, w * C) with w = 1, 1, 2, 4.
    """
    if pooling == "mean":
        return act.mean(dim=(2, 3))
    if pooling == "max":
        return act.amax(dim=(2, 3))
    if pooling == "meanmax":
        return torch.cat([act.mean(dim=(2, 3)), act.amax(dim=(2, 3))], dim=1)
    if pooling == "grid2":
        return F.adaptive_avg_pool2d(act, 2).permute(0, 2, 3, 1).reshape(len(act), -1)
    raise ConfigError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")


class FeatureModels:
    """The models of one pass on one device: ZoomLDM (when there are recipes) and the encoders.

    Args:
        cfg: the configuration (model, conditioning encoder, weights, precision, compile).
        device: where the models run.
        recipes: the ZoomLDM recipes (None: the config's, ``cfg.recipes()``, validated there; empty:
            ZoomLDM is not loaded).
        encoder_families: ``{bag family: encoder registry name}`` (None: the config's,
            ``cfg.encoder_families()``; by default ``{"uni": cfg.encoder.name}``, today's ``uni_*`` bags). Weights: ``cfg.encoder.checkpoint`` for the conditioning encoder,
            ``cfg.encoder_checkpoints[name]`` (when the config has it) for the others, else the
            registry's hub id.

    Attributes:
        jobs: embedding jobs run on every tile (encoder families, then ``cond@{px}`` ones).
        dims: ``{set name: D}`` of every set (``{family}_20x``, ``_5x``, ``_fused``).
        tap_dims: ``{tap: channels}`` of every tap a recipe uses.
        latent_shape: (C, h, w) of one tile's VQ latent (the shape of each noise draw).
        max_draws: noise draws per tile (the largest ensemble).
        model: the ZoomLDM (None without recipes); encoder: the conditioning encoder (None when
            neither a recipe nor a family needs it); encoders: ``{job: encoder}``.
    """

    def __init__(
        self,
        cfg: ExtractConfig,
        device: torch.device,
        recipes: Sequence[Recipe] | None = None,
        encoder_families: dict[str, str] | None = None,
    ) -> None:
        self.cfg, self.device, self.precision = cfg, device, cfg.precision
        self.recipes = list(cfg.recipes() if recipes is None else recipes)
        self.encoder_families = dict(cfg.encoder_families() if encoder_families is None else encoder_families)
        from zoomfeat.encoders import EMBED_DIM

        self._used: set[tuple] = set()  # cache keys of this pass's models
        self.model = (
            self._load(_zoomldm_key(cfg, device), lambda: build_zoomldm(cfg, device))
            if self.recipes
            else None
        )
        if self.model is not None and cfg.encoder.name in EMBED_DIM:
            self._refuse_pairing(EMBED_DIM[cfg.encoder.name])  # before building a 300M-parameter encoder
        self.encoders: dict[str, Any] = {}
        self._job_px: dict[str, int | None] = {}  # None: the encoder's own published preprocessing
        for family, name in self.encoder_families.items():
            self.encoders[family], self._job_px[family] = self._encoder(name), None
        self.encoder = self._encoder(cfg.encoder.name) if self.recipes else None
        if self.encoder is not None:
            self._refuse_pairing(self.encoder.embed_dim)
        self._cond_jobs = {
            px: self._cond_job_for(px) for px in dict.fromkeys(r.cond_px for r in self.recipes)
        }
        for key in [k for k in _MODEL_CACHE if k not in self._used]:
            del _MODEL_CACHE[key]  # models of an earlier pass this one does not use
        self.jobs = list(self.encoders)
        if self.model is not None:
            taps = list(dict.fromkeys(t for r in self.recipes for t in r.taps))
            channels = self.model.tap_channels(taps)  # validates the names without running
            self.tap_dims = {t: int(channels[t]) for t in taps}
            down = self.model.image_size // self.model.latent_size  # VQ-f4
            self.latent_shape = (int(self.model.latent_channels), cfg.tile_px // down, cfg.tile_px // down)
        else:
            self.tap_dims, self.latent_shape = {}, (0, 0, 0)
        self.max_draws = max((r.ensemble for r in self.recipes), default=0)
        self.dims: dict[str, int] = {}
        for r in self.recipes:
            self._add_family(r.name, r.width(self.tap_dims))
        for family in self.encoder_families:
            self._add_family(family, self.job_dim(family))

    # ------------------------------------------------------------------ building
    def _load(self, key: tuple, build) -> Any:
        self._used.add(key)
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = build()
        return _MODEL_CACHE[key]

    def _zoomldm(self) -> Any:
        """The ZoomLDM of this pass (a pass without recipes has none: asking for it is a bug)."""
        if self.model is None:
            raise RuntimeError("this extraction pass has no ZoomLDM recipe, hence no ZoomLDM")
        return self.model

    def _cond_encoder(self) -> Any:
        """The conditioning encoder (present exactly when the pass has recipes)."""
        if self.encoder is None:
            raise RuntimeError("this extraction pass has no ZoomLDM recipe, hence no conditioning encoder")
        return self.encoder

    def _refuse_pairing(self, embed_dim: int) -> None:
        cfg, ssl = self.cfg, int(self._zoomldm().ssl_channels)
        if ssl != int(embed_dim):
            raise ConfigError(
                f"model '{cfg.model.name}' is conditioned on {ssl}-channel SSL grids but "
                f"encoder '{cfg.encoder.name}' gives {embed_dim}-d embeddings: use model=zoomldm_brca with "
                "encoder=uni, or model=tiny with encoder=tiny"
            )

    def _encoder(self, name: str) -> Any:
        """The encoder ``name`` with its weights (see the class docstring)."""
        cfg = self.cfg
        if name == cfg.encoder.name:
            ckpt = cfg.encoder.checkpoint
        else:
            ckpt = (getattr(cfg, "encoder_checkpoints", None) or {}).get(name)
        key = ("encoder", name, ckpt, cfg.allow_random_weights, str(self.device), cfg.compile)
        return self._load(
            key,
            lambda: build_tile_encoder(
                name,
                checkpoint=ckpt,
                allow_random_weights=cfg.allow_random_weights,
                device=self.device,
                compile_=cfg.compile,
            ),
        )

    def _cond_job_for(self, px: int) -> str:
        """The job whose embeddings condition recipes at ``px``: a family running the conditioning
        encoder with exactly that preprocessing, else a new ``cond@{px}`` job."""
        enc = self._cond_encoder()
        native = enc.input_px == px and enc.resize_px == px
        for family, e in self.encoders.items():
            if e is enc and native:
                return family
        job = f"cond@{px}"
        self.encoders[job] = enc
        self._job_px[job] = None if native else px
        return job

    def _add_family(self, family: str, width: int) -> None:
        self.dims.update({f"{family}_20x": width, f"{family}_5x": width, f"{family}_fused": 2 * width})

    # ------------------------------------------------------------------ views
    def cond_job(self, px: int) -> str:
        """The embedding job whose output conditions recipes with ``cond_px == px``."""
        return self._cond_jobs[int(px)]

    def job_dim(self, job: str) -> int:
        """Embedding width of a job."""
        return int(self.encoders[job].embed_dim)

    def job_px(self, job: str) -> int | None:
        """The input size a job resizes tiles to (None: the encoder's own published preprocessing)."""
        return self._job_px[job]

    def checkpoint_identity(self, what: str) -> str:
        """The weights' identity (content hash, else id) of ``"zoomldm"`` or an embedding job."""
        m = self._zoomldm() if what == "zoomldm" else self.encoders[what]
        return str(m.checkpoint_hash or m.checkpoint_id)

    # ------------------------------------------------------------------ calls
    @torch.inference_mode()
    def embed(self, images: torch.Tensor, job: str | None = None) -> torch.Tensor:
        """One embedding job on tiles (``job`` None: the conditioning of the first recipe, else the
        first family).

        Args:
            images: uint8 (B, H, W, 3) tiles on the device.

        Returns:
            float32 (B, D_job).
        """
        if job is None:
            job = self.cond_job(self.recipes[0].cond_px) if self.recipes else self.jobs[0]
        enc = self.encoders[job]
        x = enc.preprocess(images, px=self._job_px[job])
        with autocast(self.device, self.precision):
            return enc(x).float()

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
        model = self._zoomldm()
        out: list[torch.Tensor] = [torch.empty(0)] * len(grids)  # every piece is filled below
        with autocast(self.device, self.precision):
            for (_, mag), idx in order.items():
                ctx = model.condition(torch.cat([grids[i] for i in idx]), mag).float()
                pos = 0
                for i in idx:
                    out[i] = ctx[pos : pos + len(grids[i])]
                    pos += len(grids[i])
        return torch.cat(out)

    @torch.inference_mode()
    def zoomldm_features(
        self,
        images: torch.Tensor,
        contexts: torch.Tensor | dict[int, torch.Tensor],
        noise: torch.Tensor,
        recipes: Sequence[Recipe] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every recipe's features of tiles: one VQ encoding (:meth:`encode_tiles`), one UNet forward
        per (timestep, cond_px) group and draw (:meth:`latent_features`).

        Args:
            images: uint8 (B, H, W, 3) tiles on the device.
            contexts: ``{cond_px: float32 (B, 65, C_ctx)}`` from :meth:`contexts` on the grids of
                :meth:`cond_job` (a bare tensor: the contexts of every recipe).
            noise: float32 (B, k, *latent_shape); a recipe with ensemble e uses draws 0..e-1 (k >= e).
            recipes: the recipes to compute (None: all of this pass's).

        Returns:
            ``{recipe name: float32 (B, D_r)}``.
        """
        return self.latent_features(self.encode_tiles(images), contexts, noise, recipes)

    @torch.inference_mode()
    def encode_tiles(self, images: torch.Tensor) -> torch.Tensor:
        """``z0 = VQ.encode(x)``, the pre-quantisation latents of uint8 (B, H, W, 3) tiles on the
        device, ``x = image / 127.5 - 1``: float32 (B, *latent_shape) (what the tile store keeps)."""
        # uint8 NHWC -> float NCHW in [-1, 1]. The layout matters on CPU: torch's channels_last
        # GroupNorm CPU kernel is inaccurate (errors up to ~0.3 on the VQ encoder's first
        # GroupNorm for tiles with background, and batch-size dependent), so the CPU path feeds
        # NCHW-contiguous tensors. CUDA's GroupNorm makes its input contiguous itself, so
        # channels_last there only speeds up the convolutions.
        x = images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        with autocast(self.device, self.precision):
            return self._zoomldm().encode(x).float()

    @torch.inference_mode()
    def latent_features(
        self,
        z0: torch.Tensor,
        contexts: torch.Tensor | dict[int, torch.Tensor],
        noise: torch.Tensor,
        recipes: Sequence[Recipe] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every recipe's features from the tiles' latents ``z0`` (float32 (B, *latent_shape), from
        :meth:`encode_tiles` or the tile store); the other arguments and the result as
        :meth:`zoomldm_features`. No recipe: ``{}``."""
        recipes = self.recipes if recipes is None else list(recipes)
        if not recipes:
            return {}
        need = max(r.ensemble for r in recipes)
        if noise.shape[1] < need:
            raise ValueError(f"{noise.shape[1]} noise draw(s) per tile, but a recipe averages {need}")
        # one memory layout whatever made z0: the VQ encoder's output is channels_last (CPU and CUDA
        # alike) and the UNet's CPU kernels round differently per layout, so latents read back from
        # the tile store (contiguous) take the encoder's layout and give the same features bit for bit
        z0 = z0.contiguous(memory_format=torch.channels_last)
        out: dict[str, torch.Tensor] = {}
        with autocast(self.device, self.precision):
            model = self._zoomldm()
            for (timestep, px), group in forward_groups(recipes).items():
                ctx = contexts if torch.is_tensor(contexts) else contexts[px]
                t = torch.full((len(z0),), timestep, dtype=torch.long, device=self.device)
                taps = list(dict.fromkeys(tap for r in group for tap in r.taps))
                total: dict[str, torch.Tensor] = {}
                for j in range(max(r.ensemble for r in group)):
                    x_t = model.q_sample(z0, t, noise[:, j].to(z0.dtype))
                    acts = model.taps(x_t, t, ctx, taps)
                    pooled: dict[tuple[str, str], torch.Tensor] = {}
                    for r in group:
                        if j >= r.ensemble:
                            continue
                        parts = []
                        for tap in r.taps:
                            if (tap, r.pooling) not in pooled:
                                pooled[tap, r.pooling] = pool(acts[tap].float(), r.pooling)
                            parts.append(pooled[tap, r.pooling])
                        feat = torch.cat(parts, dim=1)
                        total[r.name] = feat if r.name not in total else total[r.name] + feat
                for r in group:
                    out[r.name] = total[r.name] / r.ensemble
        return out
