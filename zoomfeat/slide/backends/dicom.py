"""DICOM whole-slide images: one series (a directory of ``.dcm`` instances) read by openslide 4, or
by wsidicom where openslide cannot.

A DICOM WSI is a *series*: one instance per pyramid level (plus label, overview, thumbnail), all
sharing a ``SeriesInstanceUID``. zoomfeat takes a directory that holds exactly one series as one
slide, named after the directory; openslide opens the series through any of its files. A directory
holding two series is refused (which one would be "the slide"?), naming both UIDs. The series is
checked with pydicom (``pip install 'zoomfeat[dicom]'``) when it is installed, else by opening each
instance with openslide and comparing the series' quickhash (slower on large directories).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoomfeat.runtime.errors import SlideError
from zoomfeat.slide.backends.common import clipped_rgba, level_box
from zoomfeat.slide.backends.openslide_backend import OpenslideBackend, open_openslide


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(directory: Path) -> list[Path]:
    """The DICOM instances directly inside ``directory``: ``*.dcm``, or extension-less files that carry
    the DICOM preamble (``DICM`` at byte 128), sorted; hidden files ignored."""
    out = []
    for f in sorted(directory.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        if f.suffix.lower() == ".dcm" or (not f.suffix and _has_dicom_magic(f)):
            out.append(f)
    return out


def is_dicom_dir(directory: Path) -> bool:
    """Whether ``directory`` holds DICOM instances (and so is one DICOM slide, not a folder of slides)."""
    try:
        return directory.is_dir() and any(f.suffix.lower() == ".dcm" for f in directory.iterdir())
    except OSError:
        return False


def series_of(files: list[Path]) -> dict[str, list[Path]]:
    """The instances grouped by series: ``{SeriesInstanceUID (or openslide quickhash): files}``."""
    groups: dict[str, list[Path]] = defaultdict(list)
    pydicom: Any
    try:
        import pydicom
    except ImportError:
        pydicom = None
    for f in files:
        if pydicom is not None:
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                uid = str(ds.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
            except Exception as err:  # pydicom raises several types for a damaged header
                raise SlideError(f"{f}: not a readable DICOM file ({type(err).__name__}: {err})") from err
        else:
            osr = open_openslide(str(f))
            uid = "quickhash " + str(osr.properties.get("openslide.quickhash-1", f.name))[:16]
            osr.close()
        groups[uid].append(f)
    return dict(groups)


def one_series(location: str) -> tuple[Path, list[Path]]:
    """``(directory, instance files)`` of the DICOM series at ``location`` (its directory or one of its
    files); a :class:`SlideError` naming it when there is no instance or more than one series."""
    path = Path(location)
    directory = path if path.is_dir() else path.parent
    files = dicom_files(directory)
    if not files:
        raise SlideError(f"{location}: no DICOM instances (.dcm files) in {directory}")
    groups = series_of(files)
    if len(groups) > 1:
        listed = "; ".join(f"{uid} ({len(fs)} file(s), e.g. {fs[0].name})" for uid, fs in groups.items())
        raise SlideError(
            f"{location}: {len(groups)} DICOM series in one directory ({listed}); a slide is one series: "
            "move each series into its own directory"
        )
    return directory, files


class DicomBackend(OpenslideBackend):
    """A DICOM WSI series read by openslide; ``location`` is its directory or one of its files."""

    name = "dicom"

    def __init__(self, location: str) -> None:
        path = Path(location)
        _, files = one_series(location)
        #: every instance of the series (a change to any of them changes the slide)
        self.files = files
        super().__init__(location, file=str(path if path.is_file() else files[0]))
        if self.properties.get("openslide.vendor") != "dicom":
            raise SlideError(
                f"{location}: openslide does not read {files[0].name} as a DICOM whole-slide image"
            )


class WsidicomBackend:
    """A DICOM WSI series read by wsidicom (``pip install 'zoomfeat[dicom]'``): for series openslide
    cannot read (tried after it when the reader is ``auto``), or forced with ``reader=wsidicom``.

    wsidicom locates reads in the pixels of the level read; the level-0 location of the interface
    is turned into them as every reader does (:func:`~zoomfeat.slide.backends.common.level_box`).
    The resolution is the series' PixelSpacing (mm) as ``openslide.mpp-x``/``-y`` (um).
    """

    name = "wsidicom"
    properties: dict[str, str]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def __init__(self, location: str) -> None:
        directory, files = one_series(location)
        try:
            from wsidicom import WsiDicom  # type: ignore[import-untyped]
        except ImportError as err:
            raise SlideError(
                f"{location}: reader=wsidicom needs wsidicom: pip install 'zoomfeat[dicom]'"
            ) from err
        try:
            self._wsi = WsiDicom.open([str(f) for f in files])
            levels = list(self._wsi.levels)
        except Exception as err:  # wsidicom raises its own types for what it cannot read
            raise SlideError(
                f"{location}: not a DICOM WSI wsidicom can open ({type(err).__name__}: {err})"
            ) from err
        self.files = files
        self._levels = [int(lv.level) for lv in levels]
        self.level_dimensions = tuple((int(lv.size.width), int(lv.size.height)) for lv in levels)
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions)
        props = {"openslide.vendor": "dicom"}
        try:
            spacing = self._wsi.pixel_spacing  # mm per pixel
            props["openslide.mpp-x"] = str(float(spacing.width) * 1000.0)
            props["openslide.mpp-y"] = str(float(spacing.height) * 1000.0)
        except Exception:  # no PixelSpacing: the MPP rules ask for mpp=
            pass
        self.properties = props

    def read_rgba(self, level: int, x0: int, y0: int, w: int, h: int) -> Image.Image:
        def read(lx: int, ly: int, rw: int, rh: int) -> np.ndarray:
            return np.asarray(self._wsi.read_region((lx, ly), self._levels[level], (rw, rh)).convert("RGB"))

        d = self.level_downsamples[level]
        return clipped_rgba((w, h), self.level_dimensions[level], level_box(x0, y0, d), read)

    def close(self) -> None:
        self._wsi.close()
