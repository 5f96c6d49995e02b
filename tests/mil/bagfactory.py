"""Small synthetic bags for the MIL tests, written with zoomfeat.bags.write_bag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from zoomfeat.bags import write_bag
from zoomfeat.mil.bagset import BagSet

COORDS_ATTRS = {
    "patch_size": 256,
    "patch_size_level0": 512,
    "level0_magnification": 40.0,
    "target_magnification": 20.0,
    "overlap": 0,
    "name": "synthetic",
    "level0_width": 4096,
    "level0_height": 4096,
}


def planted_bags(
    n_cases: int = 40, slides_per_case: int = 1, dim: int = 16, seed: int = 0, signal: float = 3.0
):
    """Classic MIL bags: a positive bag holds 1-3 'key' instances shifted by ``signal`` along
    the first four features; everything else is N(0, 1). Returns (table, {slide_id: features})."""
    rng = np.random.default_rng(seed)
    rows, feats = [], {}
    for c in range(n_cases):
        case = f"TCGA-ZZ-{c:04d}"
        label = c % 2
        for s in range(slides_per_case):
            slide = f"{case}-01Z-00-DX{s + 1}"
            n = int(rng.integers(8, 24))
            x = rng.normal(size=(n, dim)).astype(np.float32)
            if label:
                k = int(rng.integers(1, 4))
                x[:k, :4] += signal
                x = x[rng.permutation(n)]
            feats[slide] = x
            rows.append({"slide_id": slide, "case_id": case, "label": "ILC" if label else "IDC"})
    return pd.DataFrame(rows), feats


def write_bags(root: Path, feature_set: str, feats: dict[str, np.ndarray]) -> Path:
    """Write ``{root}/features_{feature_set}/{slide}.h5`` bags; returns that directory."""
    out = root / f"features_{feature_set}"
    for slide, x in feats.items():
        coords = np.stack([np.arange(len(x)) * 256, np.zeros(len(x))], 1)
        write_bag(out / f"{slide}.h5", x, coords, COORDS_ATTRS, attrs={"encoder": feature_set})
    return out


def in_memory_bagset(table: pd.DataFrame, feats: dict[str, np.ndarray], labels=None) -> BagSet:
    """``planted_bags``' output as an in-memory float16 :class:`BagSet` (labels: ILC = 1, or given)."""
    slides = table["slide_id"].tolist()
    y = np.asarray(labels if labels is not None else (table["label"] == "ILC").astype(int), dtype=np.int64)
    return BagSet(
        feature_set="synthetic",
        source=None,
        slide_ids=slides,
        case_ids=table["case_id"].tolist(),
        labels=y,
        dim=next(iter(feats.values())).shape[1],
        n_instances=np.asarray([len(feats[s]) for s in slides]),
        bags=[feats[s].astype(np.float16) for s in slides],
        coords=[None] * len(slides),
    )
