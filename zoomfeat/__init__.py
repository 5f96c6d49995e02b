"""zoomfeat: multi-scale ZoomLDM diffusion features from whole-slide images.

The public entry points for MIL codebases are re-exported here lazily, so that
``import zoomfeat`` stays cheap (no torch import until a model is needed).
"""

from __future__ import annotations

from zoomfeat.runtime.version import __version__

__all__ = ["__version__", "extract_slide", "open_bag", "BagDataset"]


def __getattr__(name: str):
    if name == "open_bag":
        from zoomfeat.bags import open_bag

        return open_bag
    if name == "BagDataset":
        from zoomfeat.bags import BagDataset

        return BagDataset
    if name == "extract_slide":
        from zoomfeat.features.pipeline import extract_slide

        return extract_slide
    raise AttributeError(f"module 'zoomfeat' has no attribute {name!r}")
