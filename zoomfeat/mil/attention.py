"""Per-fold attention files: ``attention/{set}/repeat{r}_fold{f}.h5``, one group per test slide.

Each group holds the bag's raw attention logits ``a`` (N,), the attention weights
``softmax(a)_i = e^{a_i - max a} / sum_j e^{a_j - max a}`` (max-shifted so no exponent overflows;
these are the weights ABMIL pools the bag with), the tiles' level-0 ``coords`` (N, 2) when the
bag has them, and the slide's label, predicted probability and case id as attributes.
``zoomfeat.heatmap`` draws them over slide thumbnails. Files are written atomically
(:mod:`zoomfeat.runtime.atomic`): a killed run leaves complete files or none.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoomfeat.runtime.atomic import atomic_path


def write_attention(
    path: str | Path, slides: Mapping[str, Mapping[str, Any]], attrs: Mapping[str, Any] | None = None
) -> Path:
    """One HDF5 file per fold: a group per test slide with ``attention`` (softmax over the bag),
    ``attention_logits`` (raw), ``coords`` (when the bag has them), and label/prob attributes.

    Args:
        path: the file (written atomically).
        slides: slide id -> ``attention_logits`` (N,), optional ``coords`` (N, 2), ``label``,
            ``prob`` (float, or (k,) for k classes), ``case_id``.
        attrs: file attributes (feature set, repeat, fold, task).

    Returns:
        ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for slide_id, entry in slides.items():
            g = f.create_group(slide_id.replace("/", "_"))
            logits = np.asarray(entry["attention_logits"], dtype=np.float32)
            soft = np.exp(logits - logits.max()) if len(logits) else logits
            g.create_dataset("attention_logits", data=logits)
            g.create_dataset("attention", data=soft / soft.sum() if len(logits) else soft)
            if entry.get("coords") is not None:
                g.create_dataset("coords", data=np.asarray(entry["coords"], dtype=np.int64))
            g.attrs["slide_id"] = slide_id
            for key in ("label", "prob", "case_id"):
                if key in entry:
                    g.attrs[key] = entry[key]
    return path


def read_attention(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read one fold's attention file back.

    Args:
        path: an ``attention/{set}/repeat{r}_fold{f}.h5`` file.

    Returns:
        ``{slide_id: {"attention" (N,), "attention_logits" (N,), "coords" (N, 2) when stored,
        "label", "prob", "case_id", "slide_id"}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:
        for name, g in f.items():
            entry = {k: g[k][()] for k in g.keys()}
            entry.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()})
            out[str(entry.get("slide_id", name))] = entry
    return out
