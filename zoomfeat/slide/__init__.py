"""Whole-slide images of every kind: MPP and magnification, tissue detection, the nested 20x/5x tile grid.

from zoomfeat.slide import Slide, TileGrid, split_parent
slide = Slide.open("slide.svs")            # mpp= overrides the file's resolution
# also a DICOM series directory, an OME-TIFF, a PNG with mpp=, an s3:// or https:// URL (docs/slides.md)
grid = TileGrid.build(slide)               # 256 px tiles at 20x, 4x4 per 5x parent
region = grid.read_parent(slide, 0)        # (1024, 1024, 3) at 20x
children, parent_tile = split_parent(region)
"""

from .backends import READERS
from .grid import Children, TileGrid, split_parent
from .identity import SlideChangedError
from .reader import MissingInputError, MppInfo, Slide, SlideError, resolve_mpp
from .remote import SlideCache
from .tissue import TissueMask, detect_tissue, tissue_mask

__all__ = [
    "Children",
    "MissingInputError",
    "MppInfo",
    "READERS",
    "Slide",
    "SlideCache",
    "SlideChangedError",
    "SlideError",
    "TileGrid",
    "TissueMask",
    "detect_tissue",
    "resolve_mpp",
    "split_parent",
    "tissue_mask",
]
