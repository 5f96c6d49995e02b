"""Whole-slide images through openslide: resolution (MPP), magnification, regions at a target MPP.

Resolution, in order (the first that gives a plausible value wins):

1. ``mpp=`` given by the caller (an override always wins);
2. openslide's ``openslide.mpp-x`` / ``openslide.mpp-y`` (Aperio ``MPP``, NDPI, MIRAX, Philips,
   Ventana, DICOM, generic TIFF resolution tags, ... as openslide reads them);
3. the TIFF resolution tags openslide exposes (``tiff.XResolution``/``tiff.YResolution`` with
   ``tiff.ResolutionUnit`` inch or centimetre), for vendors whose driver does not turn them into
   ``openslide.mpp-*``;
4. only when asked for (``objective_power_fallback=True``): ``10 / openslide.objective-power``,
   with a warning. The objective power is *not* used by default: a scanner's "20x" is anything
   from 0.44 (Hamamatsu) to 0.50 (Aperio) um/px, and some (3DHistech) scan "20x" at 0.24 um/px,
   so guessing from it silently would mis-scale every tile.

Values outside 0.01..20 um/px (e.g. the 72 dpi a TIFF writer puts by default) are not a
microscope resolution and are ignored. Without a usable value :class:`SlideError` names the
file and says how to pass ``mpp=``.

Magnification is ``10 / mpp`` (0.499 um/px -> 20.04x), never rounded to a nominal objective.

Regions: :meth:`Slide.read_region` takes a level-0 box (float coordinates allowed) and an
output size at a target MPP, reads the pyramid level with the largest downsample not above the
needed one (plus a few pixels of margin so the resampling kernel sees real neighbours), and
resizes it with an antialiased Lanczos filter (PIL) onto the exact box. Pixels outside the slide
or transparent in the file are composited onto white.

A :class:`Slide` pickles as its path, MPP and cached metadata; the openslide handle is opened
lazily in each process (DataLoader workers) and reopened after ``fork``. openslide handles are
safe to share between threads; a lock only guards opening.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoomfeat.runtime.errors import InputNotFoundError, SlideError
from zoomfeat.runtime.units import BASE_MAG, MPP_20X
from zoomfeat.slide.naming import slide_id_from_path

#: the former name of :class:`~zoomfeat.runtime.errors.InputNotFoundError` (kept for importers)
MissingInputError = InputNotFoundError

#: openslide's hash of the slide's smallest level and properties (absent for a few formats)
QUICKHASH_PROPERTY = "openslide.quickhash-1"

#: plausible level-0 microns per pixel for a microscope slide
MPP_RANGE = (0.01, 20.0)

_MPP_HELP = (
    "pass the resolution yourself: `mpp=0.25` on the command line (python -m zoomfeat.extract SLIDE mpp=0.25), "
    "an mpp column in a manifest CSV, or Slide.open(path, mpp=0.25) from Python"
)


@dataclass(frozen=True)
class MppInfo:
    """Level-0 resolution and where it came from."""

    mpp: float
    source: str  # "override" | "openslide" | "tiff-resolution" | "objective-power"
    mpp_x: float
    mpp_y: float


def _float(props: dict[str, str], key: str) -> float | None:
    try:
        value = float(props[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def _tiff_resolution_mpp(props: dict[str, str]) -> tuple[float, float] | None:
    unit = str(props.get("tiff.ResolutionUnit", "")).strip().lower()
    microns = {"inch": 25400.0, "centimeter": 1e4, "centimetre": 1e4, "cm": 1e4}.get(unit)
    xres, yres = _float(props, "tiff.XResolution"), _float(props, "tiff.YResolution")
    if microns is None or xres is None:
        return None
    return microns / xres, microns / (yres or xres)


def resolve_mpp(
    props: dict[str, str],
    path: str | Path,
    mpp: float | None = None,
    objective_power_fallback: bool = False,
) -> MppInfo:
    """The level-0 MPP of a slide from its openslide properties (see the module docstring).

    Raises :class:`SlideError` naming ``path`` when no plausible value is found.
    """
    if mpp is not None:
        try:
            value = float(mpp)
        except (TypeError, ValueError):
            raise SlideError(f"{path}: mpp={mpp!r} is not a number (microns per pixel, e.g. 0.25)") from None
        if not (math.isfinite(value) and value > 0):
            raise SlideError(f"{path}: mpp={mpp!r} must be a positive number of microns per pixel")
        if not _plausible(value):
            warnings.warn(
                f"{path}: mpp={value} um/px is outside the usual microscope range {MPP_RANGE}", stacklevel=3
            )
        return MppInfo(value, "override", value, value)

    rejected: list[str] = []
    candidates: list[tuple[str, tuple[float, float] | None]] = []
    mx, my = _float(props, "openslide.mpp-x"), _float(props, "openslide.mpp-y")
    candidates.append(("openslide", (mx, my or mx) if mx else ((my, my) if my else None)))
    candidates.append(("tiff-resolution", _tiff_resolution_mpp(props)))
    for source, pair in candidates:
        if pair is None:
            continue
        x, y = pair
        if _plausible(x) and _plausible(y):
            if abs(x - y) > 0.01 * max(x, y):
                warnings.warn(
                    f"{path}: non-square pixels (mpp-x {x:g}, mpp-y {y:g}); using their mean", stacklevel=3
                )
            return MppInfo((x + y) / 2.0, source, x, y)
        rejected.append(f"{source} gives {x:g} x {y:g} um/px (implausible)")

    power = _float(props, "openslide.objective-power")
    if power is not None and objective_power_fallback:
        value = MPP_20X * BASE_MAG / power
        warnings.warn(
            f"{path}: no MPP in the file; guessing {value:g} um/px from objective power {power:g}x "
            f"(scanners differ: check it, or {_MPP_HELP})",
            stacklevel=3,
        )
        return MppInfo(value, "objective-power", value, value)
    hint = ""
    if power is not None:
        hint = (
            f" The file reports objective power {power:g}x (about {MPP_20X * BASE_MAG / power:g} um/px on Aperio-like "
            f"scanners, but scanners differ): if that is right for your scanner, pass mpp={MPP_20X * BASE_MAG / power:g} "
            "(from Python, Slide.open(path, objective_power_fallback=True) uses it with a warning)."
        )
    seen = f" ({'; '.join(rejected)})" if rejected else ""
    raise SlideError(f"{path}: no resolution (microns per pixel) in the file{seen}; {_MPP_HELP}.{hint}")


def _open_openslide(path: Path):
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as err:
        raise SlideError(
            f"{path}: not a slide openslide can open ({err}). Supported: Aperio .svs/.tif, Hamamatsu "
            ".ndpi/.vms, Leica .scn, MIRAX .mrxs, Philips .tiff, Sakura .svslide, Ventana .bif, DICOM, "
            "and generic *tiled* pyramidal TIFF"
        ) from err


class Slide:
    """A whole-slide image with a known level-0 resolution. Open with :meth:`Slide.open`."""

    def __init__(self, path: str | Path, mpp_info: MppInfo, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.slide_id = slide_id_from_path(self.path)  # TRIDENT's id: x.ome.tiff -> x
        self.mpp = float(mpp_info.mpp)
        self.mpp_source = mpp_info.source
        self.mpp_x, self.mpp_y = float(mpp_info.mpp_x), float(mpp_info.mpp_y)
        self.dimensions: tuple[int, int] = tuple(meta["dimensions"])
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(d) for d in meta["level_dimensions"])
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in meta["level_downsamples"])
        self.vendor: str = meta["vendor"]
        self.objective_power: float | None = meta.get("objective_power")
        self.properties: dict[str, str] = dict(meta.get("properties", {}))
        self._osr = None
        self._pid = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls, path: str | Path, mpp: float | None = None, objective_power_fallback: bool = False
    ) -> Slide:
        """Open ``path`` with openslide and resolve its MPP (``mpp=`` overrides the file).

        Raises ``FileNotFoundError`` for a missing path and :class:`SlideError` (naming the file)
        for a file openslide cannot open or one without a usable resolution.
        """
        path = Path(path)
        if not path.exists():
            raise InputNotFoundError(f"no slide file at {path}")
        if path.is_dir():
            raise SlideError(f"{path}: is a directory, not a slide file")
        osr = _open_openslide(path)
        props = dict(osr.properties)
        info = resolve_mpp(props, path, mpp, objective_power_fallback)
        meta = {
            "dimensions": osr.dimensions,
            "level_dimensions": osr.level_dimensions,
            "level_downsamples": osr.level_downsamples,
            "vendor": props.get("openslide.vendor") or "unknown",
            "objective_power": _float(props, "openslide.objective-power"),
            "properties": props,
        }
        slide = cls(path, info, meta)
        slide._osr, slide._pid = osr, os.getpid()
        if min(slide.dimensions) <= 0:
            raise SlideError(f"{path}: empty image ({slide.dimensions[0]}x{slide.dimensions[1]} px)")
        return slide

    def identity(self) -> dict[str, Any]:
        """Where this slide came from: ``quickhash`` (openslide's, ``""`` when absent), file ``size``
        in bytes and the resolved ``path``. Two files are the same slide when quickhash and size
        agree; the path only informs (a moved slide folder is the same slide)."""
        try:
            size = int(self.path.stat().st_size)
        except OSError:
            size = -1
        return {
            "quickhash": str(self.properties.get(QUICKHASH_PROPERTY, "")),
            "size": size,
            "path": str(self.path.resolve()),
        }

    @property
    def magnification(self) -> float:
        """Equivalent objective magnification, ``10 / mpp`` (not rounded)."""
        return MPP_20X * BASE_MAG / self.mpp

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def _handle(self):
        if self._osr is None or self._pid != os.getpid():
            with self._lock:
                if self._osr is None or self._pid != os.getpid():
                    self._osr, self._pid = _open_openslide(self.path), os.getpid()
        return self._osr

    def close(self) -> None:
        with self._lock:
            if self._osr is not None and self._pid == os.getpid():
                self._osr.close()
            self._osr = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_osr"], state["_pid"], state["_lock"] = None, None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"Slide({str(self.path)!r}, {w}x{h} px, mpp={self.mpp:g} ({self.mpp_source}), "
            f"{self.magnification:.2f}x, {self.level_count} level(s), vendor={self.vendor})"
        )

    # ------------------------------------------------------------------ reading
    def best_level(self, downsample: float) -> int:
        """The level with the largest downsample not above ``downsample`` (0.1% tolerance)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.001 and d >= self.level_downsamples[best]:
                best = i
        return best

    def _read_rgba(self, level: int, x0: int, y0: int, w: int, h: int):
        """openslide read (level-0 location, level size) as a PIL RGBA image; errors name the file."""
        import openslide

        try:
            return self._handle().read_region((int(x0), int(y0)), int(level), (int(w), int(h)))
        except openslide.OpenSlideError as err:
            # openslide's handle is unusable after an error: drop it so the next read reopens.
            self._osr = None
            raise SlideError(
                f"{self.path}: cannot read {w}x{h} px at level {level} from level-0 ({x0}, {y0}): {err} "
                "(corrupt or truncated file?)"
            ) from err

    @staticmethod
    def _on_white(rgba: np.ndarray) -> np.ndarray:
        """RGB uint8 of an un-premultiplied RGBA array composited onto white."""
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgba[..., :3])
        a = alpha[..., None].astype(np.uint16)
        out = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
        return out.astype(np.uint8)

    def read_level_rgb(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Raw openslide read: level-0 location, level size; RGB uint8 with transparency on white."""
        return self._on_white(np.asarray(self._read_rgba(level, x0, y0, w, h)))

    def read_box(self, x0: float, y0: float, w0: float, h0: float, out_w: int, out_h: int) -> np.ndarray:
        """The level-0 box ``[x0, x0+w0) x [y0, y0+h0)`` (floats allowed) as RGB uint8 (out_h, out_w, 3).

        Reads the best pyramid level for the scale and resizes with an antialiased Lanczos filter;
        outside-slide and transparent pixels are white.
        """
        from PIL import Image

        out_w, out_h = int(out_w), int(out_h)
        if out_w <= 0 or out_h <= 0 or not (w0 > 0 and h0 > 0):
            raise ValueError(f"{self.path}: empty read ({w0}x{h0} level-0 px -> {out_w}x{out_h})")
        scale = min(w0 / out_w, h0 / out_h)  # level-0 px per output px
        level = self.best_level(scale)
        d = self.level_downsamples[level]
        # box in this level's pixel coordinates
        bx0, by0, bx1, by1 = x0 / d, y0 / d, (x0 + w0) / d, (y0 + h0) / d
        rx, ry = (bx1 - bx0) / out_w, (by1 - by0) / out_h  # level px per output px
        if abs(rx - 1) < 1e-9 and abs(ry - 1) < 1e-9 and d == round(d):
            if abs(bx0 - round(bx0)) < 1e-6 and abs(by0 - round(by0)) < 1e-6:  # pixel-aligned: a plain crop
                return self.read_level_rgb(level, round(bx0) * int(d), round(by0) * int(d), out_w, out_h)
        margin = math.ceil(3 * max(1.0, rx, ry)) + 1  # Lanczos support, in level px
        loc_x = math.floor((bx0 - margin) * d)
        loc_y = math.floor((by0 - margin) * d)
        start_x, start_y = loc_x / d, loc_y / d  # where the read starts, in level px
        w = math.ceil(bx1 + margin - start_x)
        h = math.ceil(by1 + margin - start_y)
        img = self._read_rgba(level, loc_x, loc_y, w, h)
        box = (bx0 - start_x, by0 - start_y, bx1 - start_x, by1 - start_y)
        # PIL resamples RGBA in premultiplied form, so compositing onto white afterwards is exact.
        out = img.resize((out_w, out_h), Image.LANCZOS, box=box)
        return self._on_white(np.asarray(out))

    def read_region(self, x0: float, y0: float, size_px: int, mpp: float) -> np.ndarray:
        """A square RGB uint8 (size_px, size_px, 3) at ``mpp`` um/px, top-left at level-0 (x0, y0).

        The region covers ``size_px * mpp / self.mpp`` level-0 px; ``x0``/``y0`` may be fractional.
        """
        if not (mpp and mpp > 0):
            raise ValueError(f"{self.path}: target mpp must be positive, got {mpp!r}")
        extent = size_px * float(mpp) / self.mpp
        return self.read_box(x0, y0, extent, extent, size_px, size_px)

    def thumbnail(
        self, mpp: float, max_px: int = 8192, block_px: int = 4096, progress: bool = True
    ) -> tuple[np.ndarray, float, float]:
        """The whole slide at ``mpp`` um/px (or coarser, so the long side is at most ``max_px``).

        Returns ``(rgb uint8 (h, w, 3), downsample_x, downsample_y)`` where the downsamples are
        level-0 px per thumbnail px (the thumbnail spans the slide exactly). Read in blocks, so
        memory stays bounded even on a one-level slide.
        """
        from tqdm.auto import tqdm

        W, H = self.dimensions
        mpp = max(float(mpp), self.mpp * max(W, H) / max_px)
        tw, th = max(1, round(W * self.mpp / mpp)), max(1, round(H * self.mpp / mpp))
        dx, dy = W / tw, H / th
        level = self.best_level(min(dx, dy))
        # output block so that one read stays below ~block_px level pixels a side
        step = max(1, int(block_px / max(1.0, min(dx, dy) / self.level_downsamples[level])))
        out = np.empty((th, tw, 3), np.uint8)
        blocks = [(bx, by) for by in range(0, th, step) for bx in range(0, tw, step)]
        for bx, by in tqdm(
            blocks, desc=f"thumbnail {self.slide_id}", disable=not progress or len(blocks) < 16, leave=False
        ):
            bw, bh = min(step, tw - bx), min(step, th - by)
            out[by : by + bh, bx : bx + bw] = self.read_box(bx * dx, by * dy, bw * dx, bh * dy, bw, bh)
        return out, dx, dy
