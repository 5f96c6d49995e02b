"""UNI (Chen et al. 2024): timm ViT-L/16, the SSL encoder ZoomLDM is conditioned on.

Weights come from a local ``pytorch_model.bin`` / ``.safetensors`` file (or a directory holding
one) or the gated hub repo ``MahmoodLab/UNI`` (needs an accepted licence and a token). Without
weights the encoder is only built when ``allow_random_weights`` is set (seeded random init, for
smoke tests and benchmarks; its features mean nothing).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from zoomfeat.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TileEncoder,
    download_from_hub,
    is_hub_id,
    load_encoder_state,
    load_weights_strict,
    resolve_weight_file,
)
from zoomfeat.runtime.errors import WeightsNotFoundError
from zoomfeat.runtime.provenance import file_hash
from zoomfeat.runtime.seeding import seeded

HUB_ID = "MahmoodLab/UNI"
UNI_KWARGS: dict[str, Any] = {"init_values": 1e-5, "dynamic_img_size": True, "num_classes": 0}


def uni_vit(device: str | torch.device | None = None) -> torch.nn.Module:
    """The bare UNI architecture: ``timm`` ``vit_large_patch16_224`` as UNI's model card builds it."""
    import timm

    if device is not None:
        with torch.device(device):
            return timm.create_model("vit_large_patch16_224", pretrained=False, **UNI_KWARGS)
    return timm.create_model("vit_large_patch16_224", pretrained=False, **UNI_KWARGS)


def build_uni(
    checkpoint: str | None = None, allow_random_weights: bool = False, seed: int = 0
) -> TileEncoder:
    """UNI with weights from ``checkpoint`` (local file/dir or hub id).

    ``checkpoint=None``: seeded random weights when ``allow_random_weights``, else the hub repo
    ``MahmoodLab/UNI`` (gated: the error says how to get access or pass a local file).
    """
    hint = "encoder.checkpoint=/path/to/pytorch_model.bin (or a directory holding it)"
    if checkpoint is None and allow_random_weights:
        warnings.warn(
            "UNI is built with seeded RANDOM weights (allow_random_weights=true): its features are meaningless",
            stacklevel=2,
        )
        vit = seeded(uni_vit, seed)
        return TileEncoder(
            vit,
            "uni",
            input_px=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            checkpoint_id=f"random-init(seed={seed})",
            checkpoint_hash="",
        )
    checkpoint = HUB_ID if checkpoint is None else str(checkpoint)
    if is_hub_id(checkpoint):
        try:
            weight_file = download_from_hub(checkpoint, "UNI", hint, gated=True)
        except WeightsNotFoundError as err:
            raise WeightsNotFoundError(
                f"{err}\nFor a smoke test without weights, pass allow_random_weights=true."
            ) from None
        checkpoint_id = checkpoint
    else:
        weight_file = resolve_weight_file(checkpoint, "UNI")
        checkpoint_id = str(weight_file)
    state = load_encoder_state(weight_file)
    vit = uni_vit(device="meta")  # no random init: every tensor comes from the file
    load_weights_strict(vit, state, f"UNI checkpoint {weight_file}")
    return TileEncoder(
        vit,
        "uni",
        input_px=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        checkpoint_id=checkpoint_id,
        checkpoint_hash=file_hash(weight_file),
    )
