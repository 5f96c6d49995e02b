"""Which VQ autoencoder encoded a training data directory.

The shards' latents only mean something to the VQ that made them, so ``prepare`` stores a hash of
its weights in ``dataset.json`` and the trainer checks the model it trains against it. Both import
this module (it sits below them: no import cycle between prepare and the trainer).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from zoomfeat.model.zoomldm import ZoomLDM


def vq_fingerprint(model: ZoomLDM) -> str:
    """sha256 (16 hex) of ``model.vq``'s weights (float32 bytes, sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(model.vq.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
