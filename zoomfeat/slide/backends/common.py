"""What the readers share: clipping a request to the level, pasting it onto a transparent canvas."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image


def level_box(x0: int, y0: int, downsample: float) -> tuple[int, int]:
    """The level px where a read located at level-0 ``(x0, y0)`` starts: ``floor(x0 / d)`` (exact for
    the multiples of ``d`` that :meth:`zoomfeat.slide.Slide.read_box` asks for)."""
    return math.floor(x0 / downsample + 1e-9), math.floor(y0 / downsample + 1e-9)


def clipped_rgba(
    size: tuple[int, int],
    level_size: tuple[int, int],
    start: tuple[int, int],
    read: Callable[[int, int, int, int], np.ndarray],
) -> Image.Image:
    """RGBA ``size`` (w, h) image of the level px from ``start`` (x, y); ``read(lx, ly, w, h)`` returns
    the (h, w, 3 or 4) uint8 pixels of an in-bounds rectangle; outside the level stays transparent
    black (RGBA 0, 0, 0, 0), as openslide returns it."""
    w, h = size
    lw, lh = level_size
    lx, ly = start
    out = np.zeros((h, w, 4), np.uint8)
    cx0, cy0 = max(lx, 0), max(ly, 0)
    cx1, cy1 = min(lx + w, lw), min(ly + h, lh)
    if cx1 > cx0 and cy1 > cy0:
        px = np.asarray(read(cx0, cy0, cx1 - cx0, cy1 - cy0))
        if px.ndim == 2:
            px = np.repeat(px[..., None], 3, axis=2)
        dst = out[cy0 - ly : cy1 - ly, cx0 - lx : cx1 - lx]
        dst[..., :3] = px[..., :3]
        dst[..., 3] = px[..., 3] if px.shape[2] == 4 else 255
    return Image.fromarray(out, "RGBA")


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL for fsspec (``s3://``, ``gs://``, ``https://``, ``memory://``...);
    ``file://`` counts as local."""
    text = str(location)
    head, sep, _ = text.partition("://")
    return bool(sep) and head.isidentifier() and head.lower() not in ("file",)


def lower_name(location: str) -> str:
    """The lower-case last part of a path or URL (query strings dropped)."""
    return str(location).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].lower()
