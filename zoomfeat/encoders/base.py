"""Tile encoders: a timm ViT wrapped with its preprocessing, and safe weight loading.

Every encoder is an ``nn.Module`` with

- ``embed_dim``: width of the embedding it returns;
- ``preprocess(tiles)``: uint8 tensor (B, H, W, 3) -> normalised float (B, 3, 224, 224);
- ``forward(x)``: (B, 3, 224, 224) -> (B, embed_dim) (the class token);
- ``checkpoint_id`` (local path, hub id or ``random-init(seed=N)``) and ``checkpoint_hash``.

Weights are read with ``torch.load(weights_only=True)`` or safetensors: nothing from a file is
ever executed. Missing, unexpected or misshapen keys are an error that names them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoomfeat.runtime.weights import key_mismatch_lines

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

_HUB_ID = re.compile(r"^(hf-hub:|hf:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


class TileEncoder(nn.Module):
    """A ViT tile encoder with its own preprocessing (resize to ``input_px``, mean/std)."""

    def __init__(
        self,
        vit: nn.Module,
        name: str,
        input_px: int = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        checkpoint_id: str = "random-init",
        checkpoint_hash: str = "",
    ) -> None:
        super().__init__()
        self.vit = vit
        self.name = name
        self.embed_dim = int(vit.num_features)
        self.input_px = int(input_px)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.checkpoint_id = checkpoint_id
        self.checkpoint_hash = checkpoint_hash

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) tiles (any device) -> float (B, 3, input_px, input_px), normalised.

        The resize is bilinear with antialiasing (a 256 px tile becomes 224 px), as UNI's
        ``transforms.Resize(224)`` does on PIL images.
        """
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(
                f"{self.name}.preprocess expects uint8 tiles (B, H, W, 3), got shape {tuple(tiles.shape)}"
            )
        x = (
            tiles.permute(0, 3, 1, 2).to(device=self.mean.device, dtype=torch.float32, non_blocking=True)
            / 255.0
        )
        if x.shape[-2:] != (self.input_px, self.input_px):
            x = F.interpolate(
                x, size=(self.input_px, self.input_px), mode="bilinear", align_corners=False, antialias=True
            )
        return ((x - self.mean) / self.std).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, checkpoint_id={self.checkpoint_id!r}"


def is_hub_id(checkpoint: str) -> bool:
    """``owner/name`` (optionally ``hf-hub:``/``hf:`` prefixed) that is not an existing path."""
    return not Path(checkpoint).expanduser().exists() and bool(_HUB_ID.match(checkpoint))


def resolve_weight_file(checkpoint: str | os.PathLike, what: str = "encoder") -> Path:
    """A local weight file, or the first known weight file inside a local directory."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{what} checkpoint directory {path} holds none of {', '.join(WEIGHT_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint {path} does not exist")
    return path


def download_from_hub(repo_id: str, what: str, local_hint: str) -> Path:
    """Fetch the weight file of ``repo_id`` from the Hugging Face hub (cache first).

    Failures (gated repo without a token, offline machine, no such repo) become a
    ``RuntimeError`` that says how to get access or pass a local file instead.
    """
    repo_id = repo_id.split(":", 1)[1] if repo_id.startswith(("hf-hub:", "hf:")) else repo_id
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - dependency of the package
        raise RuntimeError(f"huggingface_hub is needed to fetch {what} weights from {repo_id}") from err
    errors = []
    for filename in ("pytorch_model.bin", "model.safetensors"):
        try:
            return Path(hf_hub_download(repo_id, filename))
        except Exception as err:  # noqa: BLE001 - every hub failure gets the same advice
            errors.append(f"{filename}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            # Only a file missing from a reachable repo is worth a second name; offline,
            # gated or unknown repos fail the same way for every file.
            if type(err).__name__ != "RemoteEntryNotFoundError":
                break
    raise RuntimeError(
        f"could not fetch {what} weights from the Hugging Face hub repo '{repo_id}' "
        f"({'; '.join(errors)}).\n"
        f"'{repo_id}' is gated: request access on https://huggingface.co/{repo_id}, then log in "
        f"(`huggingface-cli login` or set HF_TOKEN), and make sure this machine is online "
        f"(HF_HUB_OFFLINE is {'set' if os.environ.get('HF_HUB_OFFLINE') else 'not set'}).\n"
        f"Or download the weights elsewhere and pass the local file: {local_hint}"
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code: safetensors, or ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpicklable / corrupt files
        raise ValueError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({type(err).__name__}: {err}). "
            "zoomfeat never unpickles code from checkpoints; convert it to a plain state_dict or safetensors."
        ) from err
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path}: expected a state_dict (mapping of names to tensors), found {type(obj).__name__}"
        )
    for wrapper in ("state_dict", "model", "teacher"):
        if (
            wrapper in obj
            and isinstance(obj[wrapper], Mapping)
            and not isinstance(obj[wrapper], torch.Tensor)
        ):
            obj = obj[wrapper]
            break
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


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
    Raises ``ValueError`` listing missing, unexpected and misshapen keys, naming ``source``.
    """
    own = module.state_dict()
    state = _strip_prefixes(dict(state), set(own))
    state = {k: v for k, v in state.items() if k not in ignore}
    mismatch = key_mismatch_lines(state, own)
    if mismatch:
        raise ValueError(
            f"{source}: weights do not fit the {type(module).__name__} architecture:\n" + "\n".join(mismatch)
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=True)


def seeded_init(build, seed: int) -> nn.Module:
    """Build a module with a deterministic random init (global RNG forked, so callers are unaffected)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
