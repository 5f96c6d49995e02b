"""Units and constants shared by every layer, declared once.

A *magnification* (``Magnification``: 20.0, 5.0 ...) is not a *magnification index*
(``MagIndex``: 0, 2 ...): ZoomLDM is conditioned on the index ``m``, and a tile at index ``m``
is an image at ``20 / 2**m`` x covering ``2**m x 2**m`` 20x tiles. Lengths come in two units that
must never mix: level-0 pixels of a slide (``Level0Px``) and pixels of a tile image (``TilePx``).

Table (BRCA model, ``NUM_MAGS`` = 8 levels):

    index m    0    1    2    3     4      5       6        7
    mag       20x  10x  5x   2.5x  1.25x  0.625x  0.3125x  0.15625x
    UNI grid  1x1  2x2  4x4  8x8   16x16 (pooled to 8x8 beyond 8x8)
"""

from __future__ import annotations

from typing import NewType

Magnification = NewType("Magnification", float)  #: objective magnification, e.g. 20.0
MagIndex = NewType("MagIndex", int)  #: ZoomLDM's magnification index m (20 / 2**m)
Level0Px = NewType("Level0Px", int)  #: a length in level-0 pixels of a slide
TilePx = NewType("TilePx", int)  #: a length in pixels of a tile image

#: side of every tile image the models see (20x tiles and the downsampled 5x tiles alike)
TILE_PX: TilePx = TilePx(256)
#: microns per pixel of a 20x image (the base magnification ZoomLDM and UNI were trained at)
MPP_20X: float = 0.5
#: the base magnification, index 0
BASE_MAG: Magnification = Magnification(20.0)
#: magnification indices of the BRCA model (0 = 20x ... 7 = 0.15625x)
NUM_MAGS: int = 8
#: a 5x parent tile covers CHILDREN_PER_SIDE x CHILDREN_PER_SIDE 20x children
CHILDREN_PER_SIDE: int = 4
#: index of the 5x parent magnification used by feature extraction
PARENT_MAG_INDEX: MagIndex = MagIndex(2)


def magnification(index: int) -> Magnification:
    """The magnification of index ``m``: ``20 / 2**m`` (0 -> 20.0, 2 -> 5.0)."""
    return Magnification(BASE_MAG / 2 ** int(index))


def mag_index(mag: float, num_mags: int = NUM_MAGS) -> MagIndex:
    """The index ``m`` with ``20 / 2**m == mag``; ValueError for any other magnification."""
    for m in range(num_mags):
        if abs(magnification(m) - float(mag)) < 1e-6:
            return MagIndex(m)
    names = ", ".join(mag_name(m) for m in range(num_mags))
    raise ValueError(f"magnification {mag:g}x is not one of ZoomLDM's levels ({names})")


def mag_name(index: int) -> str:
    """``'20x'``, ``'5x'``, ``'0.15625x'`` for index ``m``."""
    return f"{magnification(index):g}x"


def grid_side(index: int, max_grid: int = 8) -> int:
    """Side of the UNI-embedding grid conditioning a tile at index ``m``: ``min(2**m, max_grid)``."""
    return min(2 ** int(index), max_grid)


#: magnification names by index, per released model domain (the index is what the model sees):
#: BRCA pathology 20x ... 0.15625x (8 levels, 20 / 2**m); NAIP satellite imagery 1x ... 4x (4 levels,
#: level k covers a 2**k x 2**k grid of native 256 px patches, never pooled: 2**3 = 8)
MAG_TABLES: dict[str, tuple[str, ...]] = {
    "brca": tuple(f"{BASE_MAG / 2**m:g}x" for m in range(NUM_MAGS)),
    "naip": ("1x", "2x", "3x", "4x"),
}


def domain_mag_index(domain: str, name: str) -> MagIndex:
    """Index of magnification ``name`` (``'5x'``, ``'3x'``) in ``domain``'s table; ValueError naming the levels."""
    table = MAG_TABLES[domain]
    text = str(name).strip().lower()
    text = text if text.endswith("x") else f"{float(text):g}x"
    if text not in table:
        raise ValueError(
            f"magnification {name!r} is not one of the {domain} model's levels ({', '.join(table)})"
        )
    return MagIndex(table.index(text))


def mag_names_for(num_mags: int) -> tuple[str, ...]:
    """The magnification names of a model with ``num_mags`` levels (8: BRCA, 4: NAIP; else indices)."""
    for table in MAG_TABLES.values():
        if len(table) == num_mags:
            return table
    return tuple(str(m) for m in range(num_mags))
