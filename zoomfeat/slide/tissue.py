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

**Flat slides** (no pyramid level near the thumbnail's resolution: some scanners and converters
write a single 10^5..10^6 px level). Making the thumbnail from level 0 in full reads every pixel:
10^12 px for a 10^6 x 10^6 slide, hours. When the level the thumbnail would read holds more than
``max_read_px`` pixels, :func:`detect_tissue` warns (naming the cost) and builds the thumbnail from
``sample_rows`` one-pixel rows per thumbnail row instead, read as strips of at most
``strip_px`` pixels (bounded memory) with a progress bar: thumbnail pixel ``(r, c)`` is

    T[r, c] = mean over k < K of  mean_{x in [X_c, X_{c+1}), sx | x}  I(x, y_rk),
    y_rk = floor((r + (k + 1/2) / K) * dy / d),   X_c = sx * round(c * dx / (d * sx))

(``I`` the level's RGB with transparent/missing tiles white, ``d`` its downsample, ``dx, dy`` the
thumbnail's level-0 px per pixel, ``K = sample_rows``, ``sx = floor(dx / d / sample_cols)`` or 1):
``K`` evenly spaced rows and about ``sample_cols`` evenly spaced pixels per thumbnail pixel (every
pixel when the thumbnail is less than ``2 * sample_cols`` times coarser). The pixels read are
``th * K * level_width`` -- a fraction ``K * d / dy`` of the level; every tile a sampled row
crosses is decoded, so the time is proportional to the slide's area (tiles are decoded whole),
with a small constant for the absent tiles of sparse files. A tissue mask at 8..30 um/px changes little: the 20x tile grid's tissue fractions are box
integrals of this mask (measured against the full read in tests/slide/test_flat_slide.py).
"""

from __future__ import annotations

import warnings
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
    *,
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


#: level pixels per second the sampled thumbnail reads and averages (absent tiles; one core), for
#: the time estimate in its warning (benchmarks/flat_slide.py)
_SAMPLED_PX_PER_S = 1.5e8

#: default of ``max_read_px``: above this many pixels in the level a thumbnail would read (about
#: 10 s of reading on one core), tissue detection samples rows instead (module docstring)
MAX_READ_PX = 1 << 30


def _thumbnail_geometry(slide, mpp: float, max_px: int) -> tuple[int, int, float, float, int]:
    """``(tw, th, dx, dy, level)`` of ``slide.thumbnail(mpp, max_px)``: its size, level-0 px per
    thumbnail px and the pyramid level it reads (the same rule as :meth:`Slide.thumbnail`)."""
    W, H = slide.dimensions
    mpp = max(float(mpp), slide.mpp * max(W, H) / max_px)
    tw, th = max(1, round(W * slide.mpp / mpp)), max(1, round(H * slide.mpp / mpp))
    dx, dy = W / tw, H / th
    return tw, th, dx, dy, slide.best_level(min(dx, dy))


def _strip_sums(rgba: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of the on-white RGB of a strip ``rgba`` (n, 4) over the runs starting at ``starts``.

    On white, a pixel is ``(c*a + 255*(255 - a)) / 255``; a fully opaque run sums ``c``, a fully
    transparent one is white. Only strips that mix partial transparency pay the per-pixel blend.
    """
    a = rgba[:, 3]
    lo, hi = int(a.min()), int(a.max())
    if lo == 255:
        return np.add.reduceat(rgba[:, :3], starts, axis=0, dtype=np.float32)
    if hi == 0:
        n = np.diff(np.append(starts, len(rgba))).astype(np.float32)
        return np.repeat(255.0 * n[:, None], 3, axis=1)
    blend = (
        rgba[:, :3].astype(np.float32) * a[:, None] + 255.0 * (255 - a[:, None].astype(np.float32))
    ) / 255
    return np.add.reduceat(blend, starts, axis=0)


def sampled_thumbnail(
    slide,
    *,
    mpp: float,
    max_px: int = 8192,
    sample_rows: int = 2,
    sample_cols: int = 16,
    strip_px: int = 1 << 16,
    progress: bool = True,
) -> tuple[np.ndarray, float, float]:
    """The thumbnail of :meth:`Slide.thumbnail` (same size and geometry) from ``sample_rows``
    one-pixel rows per thumbnail row, averaged along x over every ``sx``-th pixel, ``sx`` so that
    about ``sample_cols`` pixels per thumbnail pixel count (every pixel up to 2 * sample_cols;
    formula in the module docstring). Memory: the thumbnail plus one strip of ``strip_px`` pixels.
    """
    from tqdm.auto import tqdm

    tw, th, dx, dy, level = _thumbnail_geometry(slide, mpp, max_px)
    d = float(slide.level_downsamples[level])
    lw, lh = slide.level_dimensions[level]
    sx = max(1, int(dx / d) // max(1, int(sample_cols)))
    # column edges X_c in level px, multiples of sx (strictly increasing: dx / d >= sx)
    edges = np.minimum(np.round(np.arange(tw + 1) * (dx / d / sx)).astype(np.int64) * sx, lw)
    edges[-1] = lw
    counts = np.maximum(-(-np.diff(edges) // sx), 1).astype(np.float32)  # samples per column
    # column chunks: whole thumbnail columns, at most ~strip_px level px each
    chunks, c0 = [], 0
    while c0 < tw:
        c1 = int(np.searchsorted(edges, edges[c0] + max(int(strip_px), 1), side="right")) - 1
        c1 = min(max(c1, c0 + 1), tw)
        chunks.append((c0, c1))
        c0 = c1
    k_rows = max(1, min(int(sample_rows), int(dy / d)))
    out = np.empty((th, tw, 3), np.uint8)
    acc = np.empty((tw, 3), np.float32)
    for r in tqdm(range(th), desc=f"tissue (flat slide) {slide.slide_id}", unit="row", disable=not progress):
        acc[:] = 0
        for k in range(k_rows):
            y = min(int((r + (k + 0.5) / k_rows) * dy / d), lh - 1)
            for c0, c1 in chunks:
                x0, x1 = int(edges[c0]), int(edges[c1])
                if x1 <= x0:
                    continue
                # package-internal: the raw RGBA, blended on white per run (_strip_sums), not per pixel
                rgba = np.asarray(slide._read_rgba(level, round(x0 * d), round(y * d), x1 - x0, 1))[0, ::sx]
                acc[c0:c1] += _strip_sums(rgba, (edges[c0:c1] - x0) // sx)
        out[r] = np.clip(np.rint(acc / (counts[:, None] * k_rows)), 0, 255).astype(np.uint8)
    return out, dx, dy


def detect_tissue(
    slide,
    mpp: float = 8.0,
    max_px: int = 8192,
    progress: bool = True,
    *,
    max_read_px: int = MAX_READ_PX,
    sample_rows: int = 2,
    **kwargs,
) -> TissueMask:
    """Read ``slide``'s thumbnail at ``mpp`` um/px and find the tissue (see the module docstring).

    When the pyramid level the thumbnail needs holds more than ``max_read_px`` pixels (a flat
    slide), the thumbnail is sampled from ``sample_rows`` rows per thumbnail row
    (:func:`sampled_thumbnail`), with a warning naming the cost. ``kwargs`` go to :func:`tissue_mask`.
    """
    tw, th, dx, dy, level = _thumbnail_geometry(slide, mpp, max_px)
    lw, lh = slide.level_dimensions[level]
    if lw * lh > max_read_px:
        d = float(slide.level_downsamples[level])
        k_rows = max(1, min(int(sample_rows), int(dy / d)))
        read = th * k_rows * lw
        warnings.warn(
            f"{slide.path}: no pyramid level near {slide.mpp * min(dx, dy):.3g} um/px (level {level} is "
            f"{lw}x{lh} px = {lw * lh / 1e9:.3g} Gpx); tissue detection samples {k_rows} of every "
            f"{dy / d:.0f} rows of it ({read / 1e9:.3g} Gpx to read, every tile crossed decoded: about "
            f"{read / _SAMPLED_PX_PER_S:.0f} s plus the decoding of the tissue tiles). Saving the slide "
            "with a pyramid (e.g. vips tiffsave IN OUT --tile --pyramid --compression jpeg) makes this seconds",
            stacklevel=2,
        )
        thumb, dx, dy = sampled_thumbnail(
            slide, mpp=mpp, max_px=max_px, sample_rows=sample_rows, progress=progress
        )
    else:
        thumb, dx, dy = slide.thumbnail(mpp, max_px=max_px, progress=progress)
    actual_mpp = slide.mpp * (dx + dy) / 2
    mask, threshold = tissue_mask(thumb, actual_mpp, **kwargs)
    return TissueMask(
        mask=mask, thumbnail=thumb, mpp=actual_mpp, downsample_x=dx, downsample_y=dy, threshold=threshold
    )
