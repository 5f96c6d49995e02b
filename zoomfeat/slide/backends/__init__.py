"""Slide readers ("backends"): one small interface over openslide, tiffslide, plain images and DICOM.

:class:`zoomfeat.slide.Slide` does everything a slide means to zoomfeat (MPP rules, region
semantics, errors naming the file, identity); a backend only answers four questions about the
file: its properties (openslide's key names), its pyramid (level sizes and downsamples), the
pixels of a level-0-located, level-sized rectangle, and how to close it.

=============  =====================================================  ==============================
reader         what it opens                                           extra install
=============  =====================================================  ==============================
``openslide``  Aperio .svs, Hamamatsu, Leica, MIRAX, Philips, Ventana,  none (``openslide-bin``)
               generic tiled TIFF: local files
``dicom``      a DICOM WSI series: a directory of ``.dcm`` instances   none to read (openslide 4);
               (or one of its files), read by openslide 4              ``zoomfeat[dicom]`` checks
                                                                       the series with pydicom
``wsidicom``   a DICOM WSI series openslide cannot read (tried after   ``zoomfeat[dicom]``
               ``dicom``), or forced
``tiffslide``  OME-TIFF pyramids (SubIFDs), SVS and generic TIFF, and  ``tiffslide`` (a dependency)
               any of them at an fsspec URL (``s3://``, ``gs://``,     + ``zoomfeat[remote]`` for
               ``https://``)                                           s3/gcs
``image``      plain single-level images (PNG, JPEG, BMP, single-level  none (PIL, tifffile);
               TIFF): ``mpp=`` required                                ``mpp=`` required
=============  =====================================================  ==============================

:func:`choose_reader` picks one from what the location is (see its docstring); ``reader=``
forces one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from PIL import Image

from zoomfeat.runtime.errors import ConfigError
from zoomfeat.slide.backends.common import is_url, lower_name

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "OME_EXTENSIONS",
    "READERS",
    "SlideBackend",
    "check_reader",
    "choose_reader",
    "fallbacks",
    "is_url",
    "lower_name",
    "open_backend",
]

#: the readers, in the order the docs list them
READERS = ("openslide", "dicom", "wsidicom", "tiffslide", "image")
#: extensions of plain (single-level) images, read whole by the ``image`` reader
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
#: extensions of OME-TIFF files (read by tiffslide: openslide ignores their SubIFD pyramid)
OME_EXTENSIONS = (".ome.tif", ".ome.tiff", ".ome.btf")
#: extension of DICOM instances
DICOM_EXTENSIONS = (".dcm",)


class SlideBackend(Protocol):
    """What a reader gives :class:`~zoomfeat.slide.Slide`.

    ``properties`` use openslide's key names (``openslide.mpp-x``, ``openslide.vendor``,
    ``tiff.XResolution`` ...), so one set of MPP rules serves every reader.
    """

    name: str
    properties: dict[str, str]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def read_rgba(self, level: int, x0: int, y0: int, w: int, h: int) -> Image.Image:
        """RGBA of ``w x h`` level px whose top-left is at level-0 ``(x0, y0)``; transparent (alpha 0)
        outside the slide, as openslide does."""
        ...

    def close(self) -> None: ...


def choose_reader(location: str, is_dir: bool = False) -> str:
    """The reader for ``location`` when none is forced.

    - a directory, or a ``.dcm`` file: ``dicom``;
    - ``.ome.tif``/``.ome.tiff``: ``tiffslide`` (openslide would see only the full-resolution level);
    - ``.png``/``.jpg``/``.jpeg``/``.bmp``: ``image``;
    - a URL: ``tiffslide`` (reads TIFF-based slides, SVS included, through fsspec);
    - anything else: ``openslide``; a ``.tif``/``.tiff`` openslide refuses is retried with
      tiffslide, then as a plain image, and a DICOM series openslide refuses with wsidicom
      (:func:`fallbacks`).
    """
    name = lower_name(location)
    if is_dir or name.endswith(DICOM_EXTENSIONS):
        return "dicom"
    if name.endswith(OME_EXTENSIONS):
        return "tiffslide"
    if name.endswith(IMAGE_EXTENSIONS):
        return "image"
    if is_url(location):
        return "tiffslide"
    return "openslide"


def fallbacks(location: str, reader: str) -> tuple[str, ...]:
    """Readers to try after the automatic choice failed to open the file."""
    name = lower_name(location)
    if reader == "openslide" and name.endswith((".tif", ".tiff")):
        return ("tiffslide", "image")
    if reader == "tiffslide" and name.endswith((".tif", ".tiff")):
        return ("image",)
    if reader == "dicom":
        return ("wsidicom",)
    return ()


def check_reader(reader: str) -> str:
    """``reader`` when it names a reader (or ``auto``); a :class:`ConfigError` naming the choices otherwise."""
    if reader != "auto" and reader not in READERS:
        raise ConfigError(f"reader={reader!r} is not a slide reader; use one of auto, {', '.join(READERS)}")
    return reader


def open_backend(
    location: str, reader: str, *, storage_options: Mapping[str, Any] | None = None
) -> SlideBackend:
    """Open ``location`` with the named reader (not ``auto``). Errors are :class:`SlideError` naming it."""
    if reader == "openslide":
        from zoomfeat.slide.backends.openslide_backend import OpenslideBackend

        return OpenslideBackend(location)
    if reader == "dicom":
        from zoomfeat.slide.backends.dicom import DicomBackend

        return DicomBackend(location)
    if reader == "wsidicom":
        from zoomfeat.slide.backends.dicom import WsidicomBackend

        return WsidicomBackend(location)
    if reader == "tiffslide":
        from zoomfeat.slide.backends.tiff import TiffslideBackend

        return TiffslideBackend(location, storage_options=storage_options)
    if reader == "image":
        from zoomfeat.slide.backends.image import ImageBackend

        return ImageBackend(location, storage_options=storage_options)
    raise ConfigError(f"reader={reader!r} is not a slide reader; use one of auto, {', '.join(READERS)}")
