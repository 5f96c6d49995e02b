"""Multi-scale fusion: each 20x tile's feature next to its 5x parent's feature."""

from __future__ import annotations

import numpy as np


def fuse(f20: np.ndarray, f5: np.ndarray, parent_idx: np.ndarray) -> np.ndarray:
    """``concat(f20[i], f5[parent_idx[i]])`` for every 20x row: (N, D20 + D5) float32."""
    f20 = np.asarray(f20, dtype=np.float32)
    f5 = np.asarray(f5, dtype=np.float32)
    parent_idx = np.asarray(parent_idx, dtype=np.int64)
    if len(f20) != len(parent_idx):
        raise ValueError(f"{len(f20)} 20x rows but {len(parent_idx)} parent indices")
    if len(parent_idx) and (parent_idx.min() < 0 or parent_idx.max() >= len(f5)):
        raise ValueError(f"parent_idx out of range for {len(f5)} 5x rows")
    return (
        np.concatenate([f20, f5[parent_idx]], axis=1)
        if len(f20)
        else np.zeros((0, f20.shape[1] + f5.shape[1]), np.float32)
    )
