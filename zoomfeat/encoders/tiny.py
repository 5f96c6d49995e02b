"""A tiny timm ViT with UNI's interface, for tests and the demo.

Embedding width 32, the SSL width the tiny ZoomLDM expects. Without a checkpoint its weights
are a seeded random init, identical on every machine for the same seed.
"""

from __future__ import annotations

from typing import Any

import torch

from zoomfeat.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TileEncoder,
    load_encoder_state,
    load_weights_strict,
    resolve_weight_file,
)
from zoomfeat.runtime.provenance import file_hash
from zoomfeat.runtime.seeding import seeded

TINY_KWARGS: dict[str, Any] = {
    "img_size": 224,
    "patch_size": 16,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "mlp_ratio": 2.0,
    # LayerScale as in UNI, but starting at 1: with UNI's 1e-5 a *random* ViT's class token hardly
    # depends on the image, and the tiny encoder must give image-dependent embeddings untrained.
    "init_values": 1.0,
    "dynamic_img_size": True,
    "num_classes": 0,
}


def tiny_vit(device: str | torch.device | None = None) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    if device is not None:
        with torch.device(device):
            return VisionTransformer(**TINY_KWARGS)
    return VisionTransformer(**TINY_KWARGS)


def build_tiny(
    checkpoint: str | None = None, allow_random_weights: bool = True, seed: int = 0
) -> TileEncoder:
    """The tiny encoder: seeded random weights (``checkpoint=None``) or a local state dict."""
    if checkpoint is None:
        vit = seeded(tiny_vit, seed)
        return TileEncoder(
            vit,
            "tiny",
            input_px=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            checkpoint_id=f"random-init(seed={seed})",
            checkpoint_hash="",
        )
    weight_file = resolve_weight_file(checkpoint, "tiny encoder")
    vit = tiny_vit(device="meta")
    load_weights_strict(vit, load_encoder_state(weight_file), f"tiny encoder checkpoint {weight_file}")
    return TileEncoder(
        vit,
        "tiny",
        input_px=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        checkpoint_id=str(weight_file),
        checkpoint_hash=file_hash(weight_file),
    )
