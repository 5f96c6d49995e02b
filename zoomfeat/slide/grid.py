"""The nested tile grid: 5x parents, each covering exactly 4x4 20x children.

Geometry (level-0 pixels, origin at the slide's top-left corner). A child is a ``tile_px`` tile at
``mag`` (nominally ``10 / mag`` um/px); a parent covers 4x4 children. Three lattices:

- ``lattice="integer"`` (feature extraction; docs/ARCHITECTURE.md, "Slides and tiles"): a child
  covers ``p = round(tile_px * (10 / mag) / slide.mpp)`` level-0 px (257 on the 0.499 um/px CMU
  slide), an integer; child ``(i, j)`` is the box ``[i p, (i+1) p) x [j p, (j+1) p)`` and a parent
  ``4p``. Coordinates are ``i p`` exactly, so every coordinate is a multiple of
  ``patch_size_level0`` (``p`` for children, ``4p`` for parents) as in TRIDENT's own files, and
  readers that grid coords by dividing by it (torchmil's ``TridentWSIDataset``, TRIDENT's slide
  encoders) find the true grid. Tiles are read from these boxes and resampled to ``tile_px``, so
  their resolution is ``p * mpp / tile_px`` (``grid.target_mpp``) instead of the nominal
  ``10 / mag``: a relative scale error ``p / s - 1`` (``s`` the exact extent) of at most
  ``0.5 / s`` (0.2% at 20x), stored as ``scale_error`` with the ``coords`` attributes. The written
  ``level0_magnification`` is ``mag * p / tile_px`` (20.078 on CMU), the value for which TRIDENT's
  patcher (``round(patch_size * level0_mag / target_mag)``) reads exactly these ``p`` and ``4p``
  boxes again.
- ``lattice="trident"`` (``trident_compat=true``): ``p = tile_px * M // mag`` with ``M`` the slide's
  nominal level-0 magnification as TRIDENT rounds it (``WSI._fetch_magnification``: 40 for
  [0.2, 0.3) um/px, 20 for [0.3, 0.6) ...), so ``p`` is 256/1024 on any "20x" scan and 512/2048 on
  any "40x" scan: TRIDENT's tiles exactly, equal across a patient's scans, at the price of a scale
  error of up to tens of percent (stored the same way).
- ``lattice="exact"`` (the default of :meth:`TileGrid.build`; training shards): a child covers the
  exact float ``s = tile_px * (10 / mag) / slide.mpp`` (256.513 on CMU); pixels are read from the
  exact float boxes, so every tile is exactly at ``10 / mag`` um/px; stored coordinates are the
  lattice lines rounded half up (``floor(i s + 0.5)``; not multiples of ``patch_size_level0 =
  round(s)`` in general). Rounding the *lines* keeps the integer boxes tiling: a parent's
  coordinate equals its top-left child's.

In every lattice the 16 children of a parent tile it exactly in ``tile_px`` pixels
(:func:`split_parent`); use :meth:`TileGrid.child_box_level0` / :meth:`TileGrid.parent_box_level0`
for the boxes read. Parents cover the whole slide (``ceil(W / 4s)`` x ``ceil(H / 4s)``); those on
the right and bottom edges reach past the slide and are padded white when read.

Selection: a child is kept when its tissue fraction (area of the tissue mask inside its box,
outside-slide area counting as background) reaches ``min_tissue`` and it overlaps the slide; a
parent is kept when any of its 16 children is kept. ``grid.children`` lists all 16 children of
every kept parent (the 5x conditioning needs the whole 4x4 block), flagged ``kept``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoomfeat.runtime.atomic import atomic_path
from zoomfeat.runtime.errors import ConfigError, SlideError
from zoomfeat.runtime.units import (
    BASE_MAG,
    CHILDREN_PER_SIDE,
    MPP_20X,
    PARENT_MAG_INDEX,
    TILE_PX,
    magnification,
)

from .reader import Slide
from .tissue import TissueMask, detect_tissue

#: children per parent side (5x parent of 20x children)
RATIO = CHILDREN_PER_SIDE
#: um/px times magnification: MPP_20X * 20 = 10, so a tile at ``mag`` is at ``10 / mag`` um/px
UM_TIMES_MAG = MPP_20X * BASE_MAG
#: the tile lattices :meth:`TileGrid.build` lays (module docstring)
LATTICES = ("exact", "integer", "trident")


def trident_level0_magnification(mpp: float) -> int:
    """The nominal level-0 magnification TRIDENT gives a slide of ``mpp`` um/px
    (``trident/wsi_objects/WSI.py``, ``_fetch_magnification``): 80, 60, 40, 20, 10 or 5."""
    for upper, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if mpp < upper:
            return mag
    raise SlideError(
        f"{mpp:g} um/px is coarser than any magnification TRIDENT knows (it stops at 2.4 um/px, 5x); "
        "trident_compat=true cannot be used for this slide"
    )


def lattice_step(
    mpp: float, tile_px: int = TILE_PX, mag: float = BASE_MAG, lattice: str = "integer"
) -> float:
    """Level-0 px per ``tile_px`` tile at ``mag`` on a slide of ``mpp`` um/px in ``lattice``:
    the exact float (``"exact"``), its rounding (``"integer"``) or TRIDENT's (``"trident"``)."""
    s = tile_px * (UM_TIMES_MAG / float(mag)) / float(mpp)
    if lattice == "exact":
        return s
    if lattice == "integer":
        return float(max(1, int(_snap(s))))
    if lattice == "trident":
        return float((tile_px * trident_level0_magnification(mpp)) // float(mag))
    raise ConfigError(f"lattice must be one of {', '.join(LATTICES)}, got {lattice!r}")


@dataclass
class Children:
    """The 20x tiles of the kept parents, parent-major, row-major (dy, then dx) inside each block:
    row ``k`` belongs to parent ``k // 16`` and sits at ``(dx, dy) = (k % 16 % 4, k % 16 // 4)``."""

    xy: np.ndarray  # int64 (16P, 2) level-0 [x, y] (lattice lines rounded half up)
    parent: np.ndarray  # int64 (16P,)
    tissue: np.ndarray  # float32 (16P,) tissue fraction
    kept: np.ndarray  # bool (16P,)

    def __len__(self) -> int:
        return len(self.xy)


def _snap(v: np.ndarray | float) -> np.ndarray:
    return np.floor(np.asarray(v, np.float64) + 0.5).astype(np.int64)


def split_parent(region: np.ndarray, *, parent_tile: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Split a parent region (4t, 4t, 3) into its 16 children (16, t, t, 3) (row-major: dy, then
    dx) and the parent tile (t, t, 3): the region downsampled 4x with the same antialiased Lanczos
    filter :meth:`Slide.read_region` uses, so it matches a direct read at the parent's MPP.

    ``parent_tile=False``: the downsample (about a third of reading a parent on one core) is
    skipped and the parent tile is white, for a run that uses no 5x tile.
    """
    from PIL import Image

    region = np.asarray(region)
    if (
        region.ndim != 3
        or region.shape[0] != region.shape[1]
        or region.shape[0] % RATIO
        or region.shape[2] != 3
    ):
        raise ValueError(f"parent region must be (4t, 4t, 3), got {region.shape}")
    t = region.shape[0] // RATIO
    children = region.reshape(RATIO, t, RATIO, t, 3).transpose(0, 2, 1, 3, 4).reshape(RATIO * RATIO, t, t, 3)
    if not parent_tile:
        return np.ascontiguousarray(children), np.full((t, t, 3), 255, np.uint8)
    parent = np.array(
        Image.fromarray(np.ascontiguousarray(region, dtype=np.uint8)).resize((t, t), Image.Resampling.LANCZOS)
    )
    return np.ascontiguousarray(children), parent


@dataclass
class TileGrid:
    """Kept 5x parents and their 4x4 20x children over one slide. Build with :meth:`TileGrid.build`."""

    parents: np.ndarray  # int64 (P, 2) level-0 [x, y]
    parent_ij: np.ndarray  # int64 (P, 2) parent lattice indices [I, J]
    children: Children
    child_size_level0: float  # exact level-0 px per child tile
    tile_px: int
    mag: float
    parent_mag: float
    min_tissue: float
    tissue_mask: TissueMask
    level0_width: int
    level0_height: int
    slide_mpp: float
    lattice: str = "exact"

    # ---------------------------------------------------------------- geometry
    @property
    def nominal_mpp(self) -> float:
        """The children's nominal resolution, ``10 / mag`` um/px."""
        return UM_TIMES_MAG / self.mag

    @property
    def target_mpp(self) -> float:
        """The resolution children are read at: ``10 / mag`` on the exact lattice, else
        ``child_size_level0 * slide_mpp / tile_px`` (the box read, resampled to ``tile_px``)."""
        if self.lattice == "exact":
            return self.nominal_mpp
        return self.child_size_level0 * self.slide_mpp / self.tile_px

    @property
    def scale_error(self) -> float:
        """Relative size error of the tiles against the nominal ``10 / mag`` (0 on the exact lattice)."""
        return self.target_mpp / self.nominal_mpp - 1.0

    @property
    def level0_magnification(self) -> float:
        """``level0_magnification`` for the coords attributes: the slide's ``10 / mpp`` on the exact
        lattice, else ``mag * p / tile_px`` -- the value from which TRIDENT's patcher computes
        ``round(tile_px * level0_magnification / target_magnification)`` = ``p`` (children) and
        ``4p`` (parents), so it re-reads exactly these boxes."""
        if self.lattice == "exact":
            return UM_TIMES_MAG / self.slide_mpp
        return self.mag * self.child_size_level0 / self.tile_px

    @property
    def parent_size_level0(self) -> float:
        return RATIO * self.child_size_level0

    @property
    def patch_size_level0(self) -> int:
        """TRIDENT's integer level-0 patch size of a child (``round(child_size_level0)``)."""
        return int(_snap(self.child_size_level0))

    @property
    def parent_patch_size_level0(self) -> int:
        return int(_snap(self.parent_size_level0))

    @property
    def mask(self) -> np.ndarray:
        """The tissue mask (bool, thumbnail resolution; see ``tissue_mask`` for its geometry)."""
        return self.tissue_mask.mask

    def __len__(self) -> int:
        return len(self.parents)

    @property
    def n_kept_children(self) -> int:
        return int(self.children.kept.sum())

    def parent_box_level0(self, i: int) -> tuple[float, float, float]:
        """Exact ``(x, y, size)`` in level-0 px of parent ``i``."""
        pi, pj = self.parent_ij[i]
        return (
            float(pi * self.parent_size_level0),
            float(pj * self.parent_size_level0),
            self.parent_size_level0,
        )

    def child_box_level0(self, k: int) -> tuple[float, float, float]:
        """Exact ``(x, y, size)`` in level-0 px of child row ``k``."""
        pi, pj = self.parent_ij[k // (RATIO * RATIO)]
        r = k % (RATIO * RATIO)
        s = self.child_size_level0
        return float((RATIO * pi + r % RATIO) * s), float((RATIO * pj + r // RATIO) * s), s

    def coords_attrs(self, slide: Slide, which: str = "child", name: str | None = None) -> dict[str, Any]:
        """TRIDENT's ``coords`` attributes for the children (``"child"``) or parents (``"parent"``),
        plus ``patch_size_level0_exact`` (the float extent read), ``lattice``, ``tile_mpp`` (the
        resolution read) and ``scale_error`` (relative to the nominal ``10 / mag``)."""
        if which not in ("child", "parent"):
            raise ValueError(f"which must be 'child' or 'parent', got {which!r}")
        child = which == "child"
        return {
            "patch_size": int(self.tile_px),
            "patch_size_level0": self.patch_size_level0 if child else self.parent_patch_size_level0,
            "patch_size_level0_exact": self.child_size_level0 if child else self.parent_size_level0,
            "level0_magnification": float(self.level0_magnification),
            "target_magnification": float(self.mag if child else self.parent_mag),
            "overlap": 0,
            "name": name if name is not None else slide.slide_id,
            "level0_width": int(self.level0_width),
            "level0_height": int(self.level0_height),
            "lattice": self.lattice,
            "tile_mpp": float(self.target_mpp * (1 if child else RATIO)),
            "scale_error": float(self.scale_error),
        }

    # ---------------------------------------------------------------- reading
    def read_parent(self, slide: Slide, i: int) -> np.ndarray:
        """Parent ``i``'s region at ``mag``: uint8 (4 tile_px, 4 tile_px, 3); see :func:`split_parent`."""
        x, y, _ = self.parent_box_level0(i)
        return slide.read_region(x, y, RATIO * self.tile_px, self.target_mpp)

    def read_child(self, slide: Slide, k: int) -> np.ndarray:
        """Child row ``k`` read on its own at ``mag``: uint8 (tile_px, tile_px, 3)."""
        x, y, _ = self.child_box_level0(k)
        return slide.read_region(x, y, self.tile_px, self.target_mpp)

    # ---------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        slide: Slide,
        *,
        tile_px: int = TILE_PX,
        mag: float = BASE_MAG,
        parent_mag: float = magnification(PARENT_MAG_INDEX),
        min_tissue: float = 0.25,
        tissue: TissueMask | None = None,
        tissue_mpp: float | None = None,
        progress: bool = True,
        lattice: str = "exact",
        **tissue_kwargs,
    ) -> TileGrid:
        """Find the tissue (unless ``tissue`` is given) and lay the nested grid over ``slide``.

        ``lattice``: ``"exact"`` (float tile extent, exactly ``10 / mag`` um/px), ``"integer"``
        (feature extraction: integer extent ``p``, coords multiples of it) or ``"trident"``
        (TRIDENT's nominal-magnification extent); see the module docstring.

        ``tissue_mpp`` is the thumbnail resolution (default: a child tile spans 16 mask pixels,
        at most 8 um/px); ``tissue_kwargs`` go to :func:`zoomfeat.slide.tissue.tissue_mask`.
        A slide smaller than one tile, or without tissue, gives an empty grid and a warning.
        """
        if (
            not (float(mag) > 0 and float(parent_mag) > 0)
            or abs(float(mag) / float(parent_mag) - RATIO) > 1e-9
        ):
            raise ConfigError(
                f"mag / parent_mag must be {RATIO} (each parent covers 4x4 children), got {mag} / {parent_mag}"
            )
        if int(tile_px) != tile_px or tile_px <= 0:
            raise ConfigError(f"tile_px must be a positive integer, got {tile_px!r}")
        tile_px = int(tile_px)
        s = lattice_step(slide.mpp, tile_px, mag, lattice)
        target_mpp = s * slide.mpp / tile_px
        if target_mpp < slide.mpp * 0.99:
            warnings.warn(
                f"{slide.path}: the slide's resolution ({slide.mpp:g} um/px, {slide.magnification:.2f}x) is "
                f"coarser than the requested {mag:g}x; tiles are upsampled",
                stacklevel=2,
            )
        W, H = slide.dimensions
        if tissue is None:
            if tissue_mpp is None:
                tissue_mpp = min(8.0, s * slide.mpp / 16)
            tissue = detect_tissue(slide, mpp=tissue_mpp, progress=progress, **tissue_kwargs)
        common: dict[str, Any] = {
            "child_size_level0": s,
            "tile_px": tile_px,
            "mag": float(mag),
            "parent_mag": float(parent_mag),
            "min_tissue": float(min_tissue),
            "tissue_mask": tissue,
            "level0_width": int(W),
            "level0_height": int(H),
            "slide_mpp": slide.mpp,
            "lattice": lattice,
        }
        if W < s or H < s:
            warnings.warn(
                f"{slide.path}: the slide ({W}x{H} level-0 px) is smaller than one {mag:g}x tile "
                f"({s:.1f} level-0 px); the grid is empty",
                stacklevel=2,
            )
            return cls._empty(**common)

        n_px, n_py = math.ceil(W / (RATIO * s)), math.ceil(H / (RATIO * s))
        n = RATIO * RATIO
        r = np.arange(n)
        # every child of every parent, parent-major (J, I) then (dy, dx), a band of parent rows at a
        # time (bounded memory on huge slides: ~2^20 children per band); only kept parents stay
        band = max(1, (1 << 20) // (n * n_px))
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for j0 in range(0, n_py, band):
            gi, gj = np.meshgrid(np.arange(n_px), np.arange(j0, min(j0 + band, n_py)))
            pij_b = np.stack([gi.ravel(), gj.ravel()], axis=1).astype(np.int64)  # (Pband, 2)
            ci_b = RATIO * pij_b[:, None, 0] + (r % RATIO)[None, :]  # (Pband, 16) child lattice x index
            cj_b = RATIO * pij_b[:, None, 1] + (r // RATIO)[None, :]
            frac_b = tissue.fraction(ci_b * s, cj_b * s, s, s).astype(np.float32)
            kept_b = (frac_b >= min_tissue) & (ci_b * s < W) & (cj_b * s < H)
            keep = kept_b.any(axis=1)
            parts.append((pij_b[keep], ci_b[keep], cj_b[keep], frac_b[keep], kept_b[keep]))
        pij, ci, cj, frac, kept = (np.concatenate([p[k] for p in parts]) for k in range(5))
        if not len(pij):
            warnings.warn(
                f"{slide.path}: no tissue found (no {mag:g}x tile reaches min_tissue={min_tissue:g}; "
                f"{100 * tissue.tissue_fraction:.1f}% of the thumbnail is tissue); the grid is empty",
                stacklevel=2,
            )
            return cls._empty(**common)
        P = len(pij)
        children = Children(
            xy=np.stack([_snap(ci.ravel() * s), _snap(cj.ravel() * s)], axis=1),
            parent=np.repeat(np.arange(P, dtype=np.int64), n),
            tissue=frac.ravel(),
            kept=kept.ravel(),
        )
        parents = np.stack([_snap(pij[:, 0] * RATIO * s), _snap(pij[:, 1] * RATIO * s)], axis=1)
        return cls(parents=parents, parent_ij=pij, children=children, **common)

    @classmethod
    def _empty(cls, **common) -> TileGrid:
        z2 = np.zeros((0, 2), np.int64)
        children = Children(
            xy=z2.copy(), parent=np.zeros(0, np.int64), tissue=np.zeros(0, np.float32), kept=np.zeros(0, bool)
        )
        return cls(parents=z2, parent_ij=z2.copy(), children=children, **common)

    # ---------------------------------------------------------------- overlay
    def overlay(self, slide: Slide, max_px: int = 2048) -> np.ndarray:
        """RGB uint8 picture of the slide (long side ``max_px``, never finer than level 0) with the
        tissue mask tinted green, kept parents outlined blue, kept children cyan, dropped
        children of kept parents red."""
        from PIL import Image, ImageDraw

        from .tissue import overlay_mask

        W, H = slide.dimensions
        rgb, dx, dy = slide.thumbnail(slide.mpp * max(1.0, max(W, H) / max_px), max_px=max_px, progress=False)
        h, w = rgb.shape[:2]
        mask = (
            np.asarray(Image.fromarray(self.mask).resize((w, h), Image.Resampling.NEAREST))
            if self.mask.size
            else np.zeros((h, w), bool)
        )
        img = Image.fromarray(overlay_mask(rgb, mask, alpha=0.25))
        draw = ImageDraw.Draw(img)
        s = self.child_size_level0
        lw = max(1, round(min(w, h) / 700))

        def rect(x, y, size, *, color, width):
            draw.rectangle(
                [x / dx, y / dy, (x + size) / dx - 1, (y + size) / dy - 1], outline=color, width=width
            )

        for k in range(len(self.children)):
            x, y, _ = self.child_box_level0(k)
            if not self.children.kept[k]:
                rect(x, y, s, color=(220, 40, 40), width=1)
        for k in np.flatnonzero(self.children.kept).tolist():
            x, y, _ = self.child_box_level0(k)
            rect(x, y, s, color=(0, 190, 220), width=1)
        for i in range(len(self.parents)):
            x, y, size = self.parent_box_level0(i)
            rect(x, y, size, color=(30, 60, 230), width=lw + 1)
        text = (
            f"{slide.slide_id}  {slide.mpp:g} um/px ({slide.magnification:.2f}x)  parents {len(self.parents)}  "
            f"children kept {self.n_kept_children}/{len(self.children)}  min_tissue {self.min_tissue:g}"
        )
        draw.rectangle([0, 0, min(w, 8 + 6 * len(text)), 14], fill=(255, 255, 255))
        draw.text((4, 2), text, fill=(0, 0, 0))
        return np.asarray(img)

    def save_overlay(self, slide: Slide, png_path: str | Path, max_px: int = 2048) -> Path:
        """Save :meth:`overlay` as a PNG (the thing to look at when checking a slide); returns the path."""
        from PIL import Image

        path = Path(png_path)
        with atomic_path(path) as tmp:
            Image.fromarray(self.overlay(slide, max_px=max_px)).save(tmp, format="PNG")
        return path
