"""Build any registry encoder: architecture (on any device, ``meta`` included), output rule, weights.

:func:`build_registry_encoder` is what :func:`zoomfeat.encoders.build_encoder` calls for every
name except ``uni`` and ``tiny`` (whose modules keep their own builders so their features do not
change). :func:`build_architecture` builds the bare network on a device -- the tests build every
encoder at full size on ``meta`` (no memory) to check parameter counts, widths and key layouts.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoomfeat.encoders.base import TileEncoder, int_attr, load_encoder_state, resolve_weight_file
from zoomfeat.encoders.convert import convert
from zoomfeat.encoders.registry import EncoderSpec, get_spec
from zoomfeat.runtime.errors import WeightsError, WeightsNotFoundError
from zoomfeat.runtime.weights import hub_file, key_mismatch_lines, parse_hub_id

__all__ = [
    "AttentionalPool",
    "ClassMeanPatchPool",
    "ConvStem",
    "build_architecture",
    "build_registry_encoder",
    "load_published_state",
    "timm_kwargs",
    "wrap",
]


# ------------------------------------------------------------------------------------------------
# modules the published models need beyond timm


class ConvStem(nn.Module):
    """CTransPath's patch embedding: 2 x [3x3 stride-2 conv, BatchNorm, ReLU], a 1x1 conv, LayerNorm.

    Written from the TransPath paper's description and ``ctran.py``'s layer list (Wang et al. 2022):
    widths embed_dim/8 -> embed_dim/4 -> embed_dim; output NHWC as timm 1.0's Swin expects. The
    ``proj`` indices (0, 1, 3, 4, 6) match the published checkpoint's names.
    """

    def __init__(
        self,
        *,
        img_size: Any = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Any = None,
        strict_img_size: bool = True,
        output_fmt: str = "NHWC",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if patch_size != 4 or embed_dim % 8:
            raise ValueError("ConvStem needs patch_size 4 and embed_dim divisible by 8")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = size
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        dd = {"device": device, "dtype": dtype}
        c1, c2 = embed_dim // 8, embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(c1, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(c2, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, embed_dim, 1, **dd),
        )
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:  # timm API
        if img_size is not None:
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            self.img_size = size
            self.grid_size = (size[0] // 4, size[1] // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # NCHW -> NHWC


class ClassMeanPatchPool(nn.Module):
    """Virchow2's published embedding: ``concat(tokens[:, 0], tokens[:, num_prefix:].mean(1))``."""

    def __init__(self, num_prefix_tokens: int) -> None:
        super().__init__()
        self.num_prefix_tokens = int(num_prefix_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens :].mean(1)], dim=-1)

    def extra_repr(self) -> str:
        return f"num_prefix_tokens={self.num_prefix_tokens}"


class _Pooler(nn.Module):
    """CoCa's attentional pooler (``n_queries`` learned queries attend over the tokens)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(n_queries, d_model))
        self.heads = n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.ln_k(x)
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], h, -1).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        attn = (attn - attn.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, h * q.shape[-1])
        return self.to_out(out)


class AttentionalPool(nn.Module):
    """CONCH v1.5's output: attentional pooler (768-d, 8 heads, 1 query) on all tokens + LayerNorm."""

    def __init__(self, context_dim: int = 1024, d_model: int = 768, n_head: int = 8) -> None:
        super().__init__()
        self.attn = _Pooler(d_model, context_dim, n_head, n_queries=1)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.attn(tokens)[:, 0])


# ------------------------------------------------------------------------------------------------
# architecture


def timm_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    """The spec's timm kwargs with the string spellings turned into classes."""
    from functools import partial

    from timm.layers import SwiGLUPacked

    kw = dict(spec.timm_kwargs)
    if kw.pop("mlp_layer", None) == "SwiGLUPacked":
        kw["mlp_layer"] = SwiGLUPacked
    if kw.pop("act_layer", None) == "SiLU":
        kw["act_layer"] = nn.SiLU
    eps = kw.pop("norm_eps", None)
    if eps is not None:
        kw["norm_layer"] = partial(nn.LayerNorm, eps=eps)
    if kw.pop("conv_stem", False):
        kw["embed_layer"] = ConvStem
    return kw


def _pool(spec: EncoderSpec, vit: nn.Module) -> nn.Module | None:
    if spec.output in ("cls", "avg"):
        return None  # timm's own head (global_pool token / avg, num_classes 0) is the output
    if spec.output == "cls+mean":
        return ClassMeanPatchPool(int_attr(vit, "num_prefix_tokens"))
    if spec.output == "attn_pool":
        return AttentionalPool(context_dim=int_attr(vit, "num_features"))
    raise AssertionError(f"unknown output rule {spec.output!r}")


def build_architecture(
    name: str | EncoderSpec, device: str | torch.device | None = None
) -> tuple[nn.Module, nn.Module | None]:
    """(trunk, pool) of encoder ``name`` with untrained weights, built on ``device``.

    ``device="meta"`` allocates nothing (parameter counts, shapes, FLOPs).
    """
    spec = name if isinstance(name, EncoderSpec) else get_spec(name)
    if spec.name == "tiny":
        from zoomfeat.encoders.tiny import tiny_vit

        return tiny_vit(device), None
    import timm

    kwargs = timm_kwargs(spec)
    if device is not None and torch.device(device).type == "meta":
        kwargs["weight_init"] = "skip"  # nothing to initialise on meta (shapes only); 3x faster
    with torch.device(device) if device is not None else _nullcontext():
        vit = timm.create_model(spec.timm_model, pretrained=False, **kwargs)
        pool = _pool(spec, vit)
    return vit, pool


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def expected_state(vit: nn.Module, pool: nn.Module | None) -> dict[str, torch.Tensor]:
    """The keys (and tensors) a converted checkpoint must hold: trunk keys + ``pool.*``."""
    own = dict(vit.state_dict())
    if pool is not None:
        own.update({f"pool.{k}": v for k, v in pool.state_dict().items()})
    return own


# ------------------------------------------------------------------------------------------------
# weights


def load_published_state(
    spec: EncoderSpec,
    vit: nn.Module,
    *,
    pool: nn.Module | None,
    state: Mapping[str, torch.Tensor],
    source: str,
) -> None:
    """Convert ``state`` from the published layout and load it strictly into (vit, pool).

    Raises:
        WeightsError: naming missing, unexpected and misshapen keys (after conversion, in timm
            names) and ``source``.
    """
    converted = convert(spec.converter, state)
    own = expected_state(vit, pool)
    if not (set(converted) & set(own)):
        for prefix in ("module.", "model.", "backbone.", "encoder.", "vit."):
            if converted and all(k.startswith(prefix) for k in converted):
                converted = {k[len(prefix) :]: v for k, v in converted.items()}
    converted = {
        k: v
        for k, v in converted.items()
        if k not in ("head.weight", "head.bias", "head.fc.weight", "head.fc.bias")
    }
    mismatch = key_mismatch_lines(converted, own)
    if mismatch:
        layout = f" (after converting the {spec.converter} layout to timm names)" if spec.converter else ""
        raise WeightsError(
            f"{source}: weights do not fit the {spec.name} architecture ({spec.architecture}){layout}:\n"
            + "\n".join(mismatch)
        )
    trunk = {k: v.to(own[k].dtype) for k, v in converted.items() if not k.startswith("pool.")}
    vit.load_state_dict(trunk, strict=True, assign=True)
    if pool is not None:
        pool_state = {k[5:]: v.to(own[k].dtype) for k, v in converted.items() if k.startswith("pool.")}
        pool.load_state_dict(pool_state, strict=True, assign=True)


def _locate(spec: EncoderSpec, checkpoint: str | None) -> tuple[Path, str]:
    """(weight file, checkpoint id) for ``checkpoint`` (local file/dir, hub id, or None: the default hub)."""
    hint = f"checkpoint=/path/to/{spec.weight_files[0] if spec.weight_files else 'weights'} (or a directory holding it)"
    if checkpoint is not None:
        target = str(checkpoint)
    elif spec.hub_id is not None:
        target = spec.hub_id
    else:
        raise WeightsNotFoundError(
            f"{spec.name} ({spec.title}) weights are not on a model hub: download {spec.weights_hint} "
            f"and pass its path: {hint}.\nFor a smoke test without weights, pass allow_random_weights=true."
        )
    parsed = parse_hub_id(target)
    if parsed is not None:
        repo_id, subfolder = parsed
        try:
            path = hub_file(
                repo_id,
                spec.weight_files,
                subfolder=subfolder,
                what=f"{spec.name} weights",
                local_hint=hint,
                gated=spec.gated,
            )
        except WeightsNotFoundError as err:
            licence = f"Licence: {spec.licence}. " if spec.gated else ""
            raise WeightsNotFoundError(
                f"{err}\n{licence}For a smoke test without weights, pass allow_random_weights=true."
            ) from None
        return path, target
    path = Path(target).expanduser()
    if path.is_dir():
        for fname in spec.weight_files:
            if (path / fname).is_file():
                return path / fname, str(path / fname)
    path = resolve_weight_file(target, spec.name)
    return path, str(path)


def build_registry_encoder(
    name: str | EncoderSpec,
    checkpoint: str | None = None,
    *,
    allow_random_weights: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> TileEncoder:
    """Encoder ``name`` from the registry with its published weights, preprocessing and output.

    Args:
        name: a key of :data:`~zoomfeat.encoders.registry.ENCODERS` (not ``uni``/``tiny``, which
            have their own builders), or a spec (the tests build reduced-size variants).
        checkpoint: local weight file or directory, or hub id; None: the spec's default hub repo
            (CTransPath has none: a path is required).
        allow_random_weights: with no checkpoint, build seeded random weights (smoke tests and
            benchmarks only; a warning says so).
        seed: seed of that random init.
        device: where the encoder is placed (weights are read on the CPU first).

    Raises:
        WeightsNotFoundError: no weights (gated hub repo without a token, offline, no path).
        WeightsError: a file that does not fit the architecture (keys named) or holds code.
    """
    from zoomfeat.runtime.provenance import file_hash
    from zoomfeat.runtime.seeding import seeded

    spec = name if isinstance(name, EncoderSpec) else get_spec(name)
    if checkpoint is None and allow_random_weights:
        warnings.warn(
            f"{spec.name} is built with seeded RANDOM weights (allow_random_weights=true): its features are meaningless",
            stacklevel=2,
        )
        vit, pool = seeded(lambda: build_architecture(spec, None), seed)
        checkpoint_id, checkpoint_hash = f"random-init(seed={seed})", ""
    else:
        weight_file, checkpoint_id = _locate(spec, checkpoint)
        state = load_encoder_state(weight_file)
        # no random init: every tensor comes from the file. Swin's recomputed buffers
        # (relative_position_index, attn_mask) are not in any file: CTransPath (28M) is built on CPU.
        vit, pool = build_architecture(spec, "cpu" if spec.name == "ctranspath" else "meta")
        load_published_state(
            spec, vit, pool=pool, state=state, source=f"{spec.name} checkpoint {weight_file}"
        )
        checkpoint_hash = file_hash(weight_file)
    enc = wrap(spec, vit, pool, checkpoint_id=checkpoint_id, checkpoint_hash=checkpoint_hash)
    if device is not None:
        enc = enc.to(device)
    return enc


def wrap(
    spec: EncoderSpec,
    vit: nn.Module,
    pool: nn.Module | None,
    *,
    checkpoint_id: str = "random-init",
    checkpoint_hash: str = "",
) -> TileEncoder:
    """A :class:`TileEncoder` around (vit, pool) with the spec's preprocessing and output width."""
    return TileEncoder(
        vit,
        spec.name,
        input_px=spec.input_px,
        mean=spec.mean,
        std=spec.std,
        checkpoint_id=checkpoint_id,
        checkpoint_hash=checkpoint_hash,
        pool=pool,
        embed_dim=spec.embed_dim,
        resize_px=spec.resize_px,
        interpolation=spec.interpolation,
    )
