"""Tile encoders: a timm ViT wrapped with its preprocessing, and safe weight loading.

Every encoder is an ``nn.Module`` with

- ``embed_dim``: width of the embedding it returns;
- ``preprocess(tiles)``: uint8 tensor (B, H, W, 3) -> normalised float (B, 3, input_px, input_px);
- ``forward(x)``: (B, 3, input_px, input_px) -> (B, embed_dim) (the published output: the class
  token, or e.g. Virchow2's class token + mean patch token, see ``registry.OUTPUTS``);
- ``checkpoint_id`` (local path, hub id or ``random-init(seed=N)``) and ``checkpoint_hash``.

Weights are read through :mod:`zoomfeat.runtime.weights` (``torch.load(weights_only=True)`` or
safetensors: nothing from a file is ever executed; hub ids resolved through huggingface_hub's
cache). Missing, unexpected or misshapen keys are a :class:`~zoomfeat.runtime.errors.WeightsError`
that names them; a file that cannot be found or fetched a ``WeightsNotFoundError`` saying what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from zoomfeat.runtime.errors import WeightsError, WeightsNotFoundError
from zoomfeat.runtime.weights import (
    hub_file,
    is_hub_id,
    key_mismatch_lines,
    load_state_dict_file,
    parse_hub_id,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: weight file names looked for inside a checkpoint directory / hub repo, in order
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.safetensors",
    "pytorch_model.bin",
    "model.bin",
    "model.pth",
    "checkpoint.pth",
)
#: weight file names tried in a hub repo, in order (UNI ships ``pytorch_model.bin``)
HUB_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TileEncoder",
    "download_from_hub",
    "is_hub_id",
    "load_encoder_state",
    "load_weights_strict",
    "resolve_weight_file",
]


def int_attr(module: nn.Module, name: str) -> int:
    """An integer attribute of a third-party module (timm ViTs keep ``num_features``,
    ``num_prefix_tokens`` as plain ints, which ``nn.Module``'s typing cannot know)."""
    return int(getattr(module, name))


class TileEncoder(nn.Module):
    """A ViT tile encoder with its own preprocessing (resize to ``input_px``, mean/std).

    ``preprocess``: ``x = (resize_crop(tile) / 255 - mean) / std``; ``forward``: ``vit(x)``, or
    ``pool(vit.forward_features(x))`` for encoders whose published output is not timm's head.
    """

    # non-persistent buffers registered in __init__ (declared for the type checker)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        vit: nn.Module,
        name: str,
        *,
        input_px: int = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        checkpoint_id: str = "random-init",
        checkpoint_hash: str = "",
        pool: nn.Module | None = None,
        embed_dim: int | None = None,
        resize_px: int | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        self.vit = vit
        #: output rule applied to ``vit.forward_features`` (None: ``vit(x)`` is the output)
        self.pool = pool
        self.name = name
        self.embed_dim = int_attr(vit, "num_features") if embed_dim is None else int(embed_dim)
        self.input_px = int(input_px)
        self.resize_px = int(input_px if resize_px is None else resize_px)
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be bilinear or bicubic, got {interpolation!r}")
        self.interpolation = interpolation
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.checkpoint_id = checkpoint_id
        self.checkpoint_hash = checkpoint_hash

    def preprocess(self, tiles: torch.Tensor, px: int | None = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) tiles (any device) -> float (B, 3, input_px, input_px), normalised.

        The shorter side is resized to ``resize_px`` with antialiasing (bilinear: a 256 px tile
        becomes 224 px, as UNI's ``transforms.Resize(224)`` does on PIL images; bicubic results are
        clamped to [0, 1] as PIL's uint8 output is), then the centre ``input_px`` square is cropped
        (``transforms.CenterCrop``; Prov-GigaPath resizes to 256 and crops 224).

        Args:
            px: another input size (resize the shorter side to ``px`` and crop ``px``; a 256 px tile
                with ``px=256`` is only normalised), for ViTs with a dynamic image size (UNI's
                conditioning at the native tile size, issue 12); None: the published preprocessing.
        """
        resize_px, input_px = (self.resize_px, self.input_px) if px is None else (int(px), int(px))
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(
                f"{self.name}.preprocess expects uint8 tiles (B, H, W, 3), got shape {tuple(tiles.shape)}"
            )
        x = (
            tiles.permute(0, 3, 1, 2).to(device=self.mean.device, dtype=torch.float32, non_blocking=True)
            / 255.0
        )
        h, w = x.shape[-2:]
        if min(h, w) != resize_px:
            size = (resize_px, resize_px) if h == w else _shorter_side(h, w, resize_px)
            x = F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True)
            if self.interpolation == "bicubic":
                x = x.clamp(0.0, 1.0)
        h, w = x.shape[-2:]
        if (h, w) != (input_px, input_px):
            if min(h, w) < input_px:
                raise ValueError(f"{self.name}: resized tiles ({h}x{w}) are smaller than {input_px} px")
            top, left = int(round((h - input_px) / 2.0)), int(round((w - input_px) / 2.0))
            x = x[..., top : top + input_px, left : left + input_px]
        return ((x - self.mean) / self.std).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, input_px, input_px) -> (B, embed_dim): the published output of the encoder."""
        if self.pool is None:
            return self.vit(x)
        forward_features = cast(Callable[[torch.Tensor], torch.Tensor], self.vit.forward_features)
        return self.pool(forward_features(x))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, checkpoint_id={self.checkpoint_id!r}"


def _shorter_side(h: int, w: int, size: int) -> tuple[int, int]:
    """``transforms.Resize(size)`` on a non-square image: the shorter side becomes ``size``."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def resolve_weight_file(checkpoint: str | os.PathLike, what: str = "encoder") -> Path:
    """A local weight file, or the first of :data:`WEIGHT_FILES` inside a local directory.

    Raises:
        WeightsNotFoundError: no such file, or a directory holding none of the known names.
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise WeightsNotFoundError(
            f"{what} checkpoint directory {path} holds none of {', '.join(WEIGHT_FILES)}"
        )
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} checkpoint {path} does not exist")
    return path


def download_from_hub(hub_id: str, what: str, local_hint: str, gated: bool = True) -> Path:
    """The weight file of hub repo ``hub_id`` (``owner/name[/subfolder]``, ``hf-hub:`` prefix allowed).

    Tries :data:`HUB_WEIGHT_FILES` in order (cache first, then download). Failures (gated repo
    without a token, offline machine, no such repo) raise :class:`WeightsNotFoundError` saying
    how to get access or pass a local file instead.
    """
    parsed = parse_hub_id(hub_id)
    if parsed is None:
        raise WeightsNotFoundError(f"{what} checkpoint {hub_id!r} is neither a local path nor a hub id")
    repo_id, subfolder = parsed
    return hub_file(
        repo_id,
        HUB_WEIGHT_FILES,
        subfolder=subfolder,
        what=f"{what} weights",
        local_hint=local_hint,
        gated=gated,
    )


def load_encoder_state(path: Path) -> dict[str, torch.Tensor]:
    """Read an encoder state dict without executing code (safetensors, or weights-only torch.load).

    Training wrappers (``state_dict``, ``model``, DINO's ``teacher``) are unwrapped and non-tensor
    entries (epochs, optimiser settings) dropped.
    """
    return load_state_dict_file(path, wrappers=("state_dict", "model", "teacher"), tensors_only=True)


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "model.", "backbone.", "encoder.", "vit."):
        if state and not (set(state) & expected) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_weights_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    ignore: tuple[str, ...] = ("head.weight", "head.bias"),
) -> None:
    """Load ``state`` into ``module`` requiring the exact key set and shapes.

    Keys in ``ignore`` (a classification head that ``num_classes=0`` drops) are skipped.
    Raises :class:`WeightsError` listing missing, unexpected and misshapen keys, naming ``source``.
    """
    own = module.state_dict()
    state = _strip_prefixes(dict(state), set(own))
    state = {k: v for k, v in state.items() if k not in ignore}
    mismatch = key_mismatch_lines(state, own)
    if mismatch:
        raise WeightsError(
            f"{source}: weights do not fit the {type(module).__name__} architecture:\n" + "\n".join(mismatch)
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=True)
