"""Plain single-level images (PNG, JPEG, BMP, single-level TIFF): TMA cores, ROIs, exported regions.

The whole image is decoded into memory once per process (PIL, or tifffile for TIFF), so this reader
is for images of up to a few hundred megapixels; a large slide belongs in a tiled pyramid. A plain
image carries no microscope resolution zoomfeat trusts (PNG/JPEG "dpi" is a print setting): ``mpp=``
is required, and the error without it says so.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from zoomfeat.runtime.errors import SlideError
from zoomfeat.slide.backends.common import clipped_rgba, is_url, level_box, lower_name


def _decode(location: str, storage_options: Mapping[str, Any] | None) -> np.ndarray:
    if is_url(location):
        import fsspec  # type: ignore[import-untyped]

        with fsspec.open(location, "rb", **dict(storage_options or {})) as fh:
            data: Any = io.BytesIO(fh.read())
    else:
        data = location
    if lower_name(location).endswith((".tif", ".tiff")):
        import tifffile

        arr = tifffile.imread(data, level=0)
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
            arr = np.moveaxis(arr, 0, -1)  # planar CYX
        if arr.dtype != np.uint8:
            raise SlideError(
                f"{location}: {arr.dtype} pixels; the image reader takes 8-bit RGB(A) or grey images"
            )
        return arr
    with Image.open(data) as im:
        im.load()
        return np.asarray(im.convert("RGBA" if "A" in im.getbands() or im.mode == "P" else "RGB"))


class ImageBackend:
    """A plain image as a one-level slide (its resolution must come from ``mpp=``)."""

    name = "image"
    properties: dict[str, str]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def __init__(self, location: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        self.location = location
        try:
            arr = _decode(location, storage_options)
        except (FileNotFoundError, PermissionError, SlideError):
            raise
        except Exception as err:  # PIL/tifffile raise many types for a file they cannot decode
            raise SlideError(
                f"{location}: not an image the image reader can decode ({type(err).__name__}: {err}); "
                "it reads PNG, JPEG, BMP and single-level TIFF"
            ) from err
        if arr.ndim not in (2, 3) or min(arr.shape[:2]) <= 0:
            raise SlideError(f"{location}: not a 2-D image (shape {arr.shape})")
        self._px = arr
        h, w = arr.shape[:2]
        # no resolution: a plain image's dpi is not a microscope's (the MPP rules ask for mpp=)
        self.properties = {"openslide.vendor": "image"}
        self.level_dimensions = ((int(w), int(h)),)
        self.level_downsamples = (1.0,)

    def read_rgba(self, level: int, x0: int, y0: int, w: int, h: int) -> Image.Image:
        def read(lx: int, ly: int, rw: int, rh: int) -> np.ndarray:
            return self._px[ly : ly + rh, lx : lx + rw]

        return clipped_rgba((w, h), self.level_dimensions[0], level_box(x0, y0, 1.0), read)

    def close(self) -> None:
        pass
