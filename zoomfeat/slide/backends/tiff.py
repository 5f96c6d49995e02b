"""tiffslide: OME-TIFF pyramids (SubIFDs), SVS and generic TIFF, locally or at an fsspec URL.

tiffslide reports its properties as ``tiffslide.*``; they are renamed ``openslide.*`` so the MPP
rules of :func:`zoomfeat.slide.reader.resolve_mpp` apply unchanged. tiffslide does not read the
resolution of an OME-TIFF: it is taken from the OME-XML ``PhysicalSizeX``/``PhysicalSizeY`` (with
their units) as ``openslide.mpp-x``/``-y``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from zoomfeat.runtime.errors import SlideError
from zoomfeat.slide.backends.common import clipped_rgba, level_box

#: microns per OME length unit
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def ome_mpp(xml: str) -> tuple[float, float] | None:
    """``(mpp_x, mpp_y)`` of the first ``Pixels`` element of an OME-XML document (None without one)."""
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml or "")
    if pixels is None:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
    out = []
    for axis in ("X", "Y"):
        try:
            value = float(attrs[f"PhysicalSize{axis}"])
        except (KeyError, ValueError):
            return None
        unit = _OME_UNITS.get(attrs.get(f"PhysicalSize{axis}Unit", "µm"))
        if unit is None or not math.isfinite(value) or value <= 0:
            return None
        out.append(value * unit)
    return out[0], out[1]


class TiffslideBackend:
    """A TIFF-based slide read by tiffslide (locally or through fsspec with ``storage_options``)."""

    name = "tiffslide"
    properties: dict[str, str]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def __init__(self, location: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        import tiffslide

        self.location = location
        try:
            self._ts = tiffslide.TiffSlide(location, storage_options=dict(storage_options or {}))
            self._describe()
        except OSError:
            raise  # missing, refused, unreachable: the caller words (and for a URL retries) it
        except Exception as err:  # tifffile/zarr raise many types for a file they cannot parse
            raise SlideError(
                f"{location}: not a slide tiffslide can open ({type(err).__name__}: {err}; a damaged or "
                "truncated file?). tiffslide reads TIFF-based slides (OME-TIFF, Aperio .svs, generic tiled TIFF)"
            ) from err

    def _describe(self) -> None:
        props: dict[str, str] = {}
        for key, value in self._ts.properties.items():
            if value is None:
                continue
            props[key.replace("tiffslide.", "openslide.", 1) if key.startswith("tiffslide.") else key] = str(
                value
            )
        tf = self._ts.ts_tifffile
        if "openslide.mpp-x" not in props and tf.is_ome:
            mpp = ome_mpp(tf.ome_metadata or "")
            if mpp is not None:
                props["openslide.mpp-x"], props["openslide.mpp-y"] = str(mpp[0]), str(mpp[1])
        if "openslide.vendor" not in props:
            props["openslide.vendor"] = "ome-tiff" if tf.is_ome else "generic-tiff"
        self.properties = props
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._ts.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._ts.level_downsamples)

    def read_rgba(self, level: int, x0: int, y0: int, w: int, h: int) -> Image.Image:
        d = self.level_downsamples[level]

        def read(lx: int, ly: int, rw: int, rh: int) -> np.ndarray:
            # tiffslide locates reads at int(x0 / d): the smallest level-0 x giving lx
            loc = (math.ceil(lx * d - 1e-9), math.ceil(ly * d - 1e-9))
            arr = self._ts.read_region(loc, level, (rw, rh), as_array=True, padding=False)
            return np.asarray(arr, dtype=np.uint8)

        return clipped_rgba((w, h), self.level_dimensions[level], level_box(x0, y0, d), read)

    def close(self) -> None:
        self._ts.close()
