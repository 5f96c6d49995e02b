"""Tissue detection on a low-resolution thumbnail.

Recipe (every number is a keyword argument of :func:`tissue_mask`, in microns where it is a size,
so the result does not depend on the thumbnail resolution):

1. read the whole slide at ``mpp`` (8 um/px by default: a 256 px tile at 20x spans 16 pixels);
2. HSV saturation ``(max - min) / max`` of each pixel. White background and grey glass have
   (almost) none; H&E tissue is pink/purple. Pixels darker than ``dark_value`` (black scan
   borders, where JPEG noise makes saturation meaningless) and near-neutral pixels (chroma
   ``max - min`` below ``min_chroma``: grey glass, dark grey borders) get zero saturation;
3. a light Gaussian blur, then Otsu's threshold on the saturation of the non-dark pixels,
   clamped to ``[min_threshold, max_threshold]``: the floor keeps an all-background slide from
   having its noise split in two (it then has no tissue), the ceiling keeps an all-tissue slide
   from losing its pale stroma;
4. morphology: closing (joins fibres and gaps), opening (drops specks), removal of objects
   smaller than ``min_object_um2`` and filling of holes smaller than ``max_hole_um2``.

The result is a :class:`TissueMask` holding the mask, the thumbnail it came from and its
geometry; :meth:`TissueMask.fraction` gives the tissue fraction of level-0 boxes exactly
(area-weighted, with fractional box edges; outside the slide counts as background).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class TissueMask:
    """A boolean tissue mask over the whole slide (mask pixel (r, c) covers level-0
    ``[c*downsample_x, (c+1)*downsample_x) x [r*downsample_y, (r+1)*downsample_y)``)."""

    mask: np.ndarray  # bool (h, w)
    thumbnail: np.ndarray  # RGB uint8 (h, w, 3), the picture the mask was computed on
    mpp: float  # microns per mask pixel
    downsample_x: float  # level-0 px per mask px
    downsample_y: float
    threshold: float  # saturation threshold used
    _integral: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _F(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tissue area (mask px) in [0, x) x [0, y), bilinear in the integral image: exact for
        a pixel-constant mask at fractional corners."""
        if self._integral is None:
            integral = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.float64)
            integral[1:, 1:] = self.mask.astype(np.float64).cumsum(0).cumsum(1)
            self._integral = integral
        h, w = self.mask.shape
        x = np.clip(x, 0.0, w)
        y = np.clip(y, 0.0, h)
        xi = np.minimum(np.floor(x).astype(np.int64), max(w - 1, 0))
        yi = np.minimum(np.floor(y).astype(np.int64), max(h - 1, 0))
        fx, fy = x - xi, y - yi
        In = self._integral
        top = In[yi, xi] * (1 - fx) + In[yi, xi + 1] * fx
        bottom = In[yi + 1, xi] * (1 - fx) + In[yi + 1, xi + 1] * fx
        return top * (1 - fy) + bottom * fy

    def fraction(self, x0, y0, w0, h0) -> np.ndarray:
        """Tissue fraction of level-0 boxes ``[x0, x0+w0) x [y0, y0+h0)`` (arrays broadcast)."""
        x0, y0 = (
            np.asarray(x0, np.float64) / self.downsample_x,
            np.asarray(y0, np.float64) / self.downsample_y,
        )
        x1 = x0 + np.asarray(w0, np.float64) / self.downsample_x
        y1 = y0 + np.asarray(h0, np.float64) / self.downsample_y
        area = self._F(x1, y1) - self._F(x0, y1) - self._F(x1, y0) + self._F(x0, y0)
        return np.clip(area / ((x1 - x0) * (y1 - y0)), 0.0, 1.0)

    def overlay(self, alpha: float = 0.35) -> np.ndarray:
        """The thumbnail with tissue tinted green and its outline drawn (RGB uint8)."""
        return overlay_mask(self.thumbnail, self.mask, alpha)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """``rgb`` with ``mask`` (same h, w) tinted green and outlined in dark green."""
    out = rgb.astype(np.float32).copy()
    green = np.array([0, 200, 0], np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * green
    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(rgb.shape[:2]) // 600))
    out[edge] = (0, 110, 0)
    return out.round().astype(np.uint8)


def _disk(radius_px: float) -> np.ndarray:
    r = max(0, int(round(radius_px)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx * xx + yy * yy <= r * r + r  # "+ r": rounder small disks (r=1 gives the full 3x3)


def otsu_threshold(
    values: np.ndarray, bins: int = 256, value_range: tuple[float, float] = (0.0, 1.0)
) -> float:
    """Otsu's threshold of 1-D ``values`` (maximises the between-class variance)."""
    if values.size == 0:
        return value_range[1]
    hist, edges = np.histogram(values, bins=bins, range=value_range)
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1
    if between.max() <= 0:  # one value only: nothing to separate
        return value_range[1]
    # an empty gap between the modes makes a plateau: take its middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    i = int(best[len(best) // 2]) if best[-1] - best[0] == len(best) - 1 else int(best[0])
    return float(edges[i + 1])


def saturation(rgb: np.ndarray, dark_value: int = 40, min_chroma: int = 10) -> np.ndarray:
    """HSV saturation in [0, 1]. Pixels whose brightest channel is below ``dark_value`` (black
    borders) or whose chroma ``max - min`` is below ``min_chroma`` (neutral grey of any
    brightness, where noise alone makes saturation) get 0."""
    rgb = rgb.astype(np.float32)
    mx = rgb.max(axis=2)
    chroma = mx - rgb.min(axis=2)
    sat = chroma / np.maximum(mx, 1.0)
    sat[(mx < dark_value) | (chroma < min_chroma)] = 0.0
    return sat


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    dark_value: int = 40,
    min_chroma: int = 10,
    blur_um: float = 8.0,
    min_threshold: float = 0.07,
    max_threshold: float = 0.15,
    close_um: float = 16.0,
    open_um: float = 8.0,
    min_object_um2: float = 5000.0,
    max_hole_um2: float = 5000.0,
) -> tuple[np.ndarray, float]:
    """Tissue mask of an RGB uint8 thumbnail at ``mpp`` um/px; returns ``(mask bool, threshold)``."""
    sat = saturation(rgb, dark_value, min_chroma)
    if blur_um > 0:
        sat = ndimage.gaussian_filter(sat, sigma=blur_um / mpp / 2, mode="nearest")
    bright = rgb.max(axis=2) >= dark_value
    threshold = float(np.clip(otsu_threshold(sat[bright]), min_threshold, max_threshold))
    mask = sat > threshold
    if close_um > 0:
        r = close_um / mpp
        pad = int(round(r)) + 1  # pad so closing does not glue tissue to the border
        mask = ndimage.binary_closing(np.pad(mask, pad), structure=_disk(r))[pad:-pad, pad:-pad]
    if open_um > 0 and open_um / mpp >= 0.5:
        mask = ndimage.binary_opening(mask, structure=_disk(open_um / mpp))
    px_area = mpp * mpp
    if min_object_um2 > 0 and mask.any():
        labels, n = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1) * px_area
        keep = sizes >= min_object_um2
        keep[0] = False
        mask = keep[labels]
    if max_hole_um2 > 0 and mask.any():
        labels, n = ndimage.label(~mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1) * px_area
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        fill = sizes < max_hole_um2
        fill[0] = False
        fill[border] = False
        mask = mask | fill[labels]
    return mask, threshold


def detect_tissue(slide, mpp: float = 8.0, max_px: int = 8192, progress: bool = True, **kwargs) -> TissueMask:
    """Read ``slide``'s thumbnail at ``mpp`` um/px and find the tissue (see the module docstring).

    ``kwargs`` go to :func:`tissue_mask`.
    """
    thumb, dx, dy = slide.thumbnail(mpp, max_px=max_px, progress=progress)
    actual_mpp = slide.mpp * (dx + dy) / 2
    mask, threshold = tissue_mask(thumb, actual_mpp, **kwargs)
    return TissueMask(
        mask=mask, thumbnail=thumb, mpp=actual_mpp, downsample_x=dx, downsample_y=dy, threshold=threshold
    )
