"""A preview PNG of one slide's extraction: what was tiled, and what the features look like.

Three panels on the slide thumbnail: (1) the tissue mask and the tile grid (kept 5x parents,
kept and dropped 20x children: the slide module's overlay); (2) and (3) every kept 20x tile
painted with the first three principal components of its ZoomLDM and UNI 20x features
as RGB, so tissue regions that the features separate show up as different colours.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zoomfeat.runtime.atomic import atomic_path


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 3) colours in [0, 1]: first 3 principal components, robustly min-max scaled."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) == 0:
        return np.zeros((0, 3))
    x = x - x.mean(axis=0)
    if len(x) < 2 or not np.isfinite(x).all() or np.abs(x).max() == 0:
        return np.full((len(x), 3), 0.5)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = x @ vt[:3].T
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = np.percentile(comps, 2, axis=0), np.percentile(comps, 98, axis=0)
    return np.clip((comps - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)


def _paint(
    thumb: np.ndarray,
    coords: np.ndarray,
    *,
    size_level0: float,
    colours: np.ndarray,
    dx: float,
    dy: float,
    alpha: float = 0.8,
) -> np.ndarray:
    """Paint each tile (level-0 ``coords``, ``size_level0`` px wide) in its colour on the thumbnail
    (``dx``, ``dy``: level-0 px per thumbnail px): ``out = (1 - alpha) thumb + alpha colour``."""
    out = thumb.astype(np.float32) / 255.0
    h, w = out.shape[:2]
    for (x, y), c in zip(coords, colours):
        x0, y0 = int(x / dx), int(y / dy)
        x1, y1 = (
            max(x0 + 1, int(np.ceil((x + size_level0) / dx))),
            max(y0 + 1, int(np.ceil((y + size_level0) / dy))),
        )
        out[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)] *= 1 - alpha
        out[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)] += alpha * np.asarray(c, np.float32)
    return (out * 255).astype(np.uint8)


def save_preview(
    slide: Any,
    grid: Any,
    png_path: str | Path,
    *,
    features: Mapping[str, np.ndarray],
    max_px: int = 1024,
) -> Path:
    """Write the three-panel preview of ``slide`` to ``png_path``: the ``grid``, then the kept 20x
    tiles painted with ``features`` (``{"zoomldm_20x" | "uni_20x": (N20, D)}``, rows in the
    grid's kept-children order, as in the bags)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    png_path = Path(png_path)
    W, H = slide.dimensions
    thumb, dx, dy = slide.thumbnail(slide.mpp * max(1.0, max(W, H) / max_px), max_px=max_px, progress=False)
    panels = [
        (
            "tissue (green), 5x parents (blue), 20x tiles kept (cyan) / dropped (red)",
            grid.overlay(slide, max_px=max_px),
        )
    ]
    for name, title in (
        ("zoomldm_20x", "ZoomLDM 20x features, PCA -> RGB"),
        ("uni_20x", "UNI 20x features, PCA -> RGB"),
    ):
        if name in features:
            coords = grid.children.xy[grid.children.kept]
            colours = pca_rgb(features[name])
            panels.append(
                (
                    title,
                    _paint(thumb, coords, size_level0=grid.child_size_level0, colours=colours, dx=dx, dy=dy),
                )
            )
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 5.6 * H / max(W, 1) + 0.6), squeeze=False
    )
    for ax, (title, img) in zip(axes[0], panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    n20 = int(grid.children.kept.sum())
    fig.suptitle(
        f"{slide.slide_id}: {len(grid.parents)} 5x tiles, {n20} 20x tiles ({slide.mpp:g} um/px)", fontsize=10
    )
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return png_path
