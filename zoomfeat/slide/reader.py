"""Whole-slide images: resolution (MPP), magnification, regions at a target MPP, whatever the reader.

A :class:`Slide` reads through one of several backends (:mod:`zoomfeat.slide.backends`: openslide,
DICOM through openslide 4, tiffslide for OME-TIFF and fsspec URLs, plain images), chosen from what
the path is or forced with ``reader=``. Everything below holds for every reader: the same MPP
rules, the same region semantics, the same one-line errors naming the slide, so one slide keeps one
coordinate contract (level-0 px, the same tiles) whichever reader opens it.

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

A :class:`Slide` pickles as its location, reader, MPP and cached metadata; the backend is opened
lazily in each process (DataLoader workers) and reopened after ``fork``. openslide handles are
safe to share between threads (a lock only guards opening); the other readers' reads are
serialised by the lock. A remote slide's failed open or read is tried ``Slide.REMOTE_TRIES``
times before it is reported.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoomfeat.runtime.errors import InputError, InputNotFoundError, SlideError
from zoomfeat.runtime.units import BASE_MAG, MPP_20X
from zoomfeat.slide.backends import SlideBackend, check_reader, choose_reader, fallbacks, is_url, open_backend
from zoomfeat.slide.backends.dicom import is_dicom_dir
from zoomfeat.slide.identity import SlideChangedError, content_hash, describe_change, fingerprint
from zoomfeat.slide.naming import slide_id_from_location

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


def _connection_failed(err: BaseException) -> bool:
    """Whether ``err`` is a missing file that really is a failed connection (fsspec's HTTP filesystem
    reports a refused connection as ``FileNotFoundError``, the connection error as its cause)."""
    cause = err.__cause__ or err.__context__
    return (
        isinstance(err, FileNotFoundError)
        and isinstance(cause, OSError)
        and not isinstance(cause, FileNotFoundError)
    )


def _open_error(location: str, err: BaseException, tries: int) -> InputError:
    """One line for a slide that could not be opened (missing, refused, unreachable, unreadable)."""
    if _connection_failed(err):
        err = err.__cause__ or err.__context__ or err
    what = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]
    if isinstance(err, FileNotFoundError):
        return InputNotFoundError(
            f"no slide at {location} ({what}): check the path, bucket and key"
            + (" (and the endpoint in storage_options)" if is_url(location) else "")
        )
    if isinstance(err, PermissionError):
        return SlideError(
            f"{location}: access denied ({what}); check the credentials (the usual environment, e.g. "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or GOOGLE_APPLICATION_CREDENTIALS, or storage_options)"
        )
    return SlideError(
        f"{location}: cannot open it after {tries} tries ({what}); check the URL, the network and "
        "storage_options (or the file is damaged or truncated)"
    )


class Slide:
    """A whole-slide image with a known level-0 resolution. Open with :meth:`Slide.open`.

    ``path`` is the slide's location as given (a :class:`~pathlib.Path`, or the URL string of a
    remote slide); ``slide_id`` the name its bags get; ``reader`` the backend reading it
    (:mod:`zoomfeat.slide.backends`).
    """

    #: tries of a failed read (or open) of a remote slide before it is reported (local: 1)
    REMOTE_TRIES = 3
    #: seconds slept before the second, third ... try
    RETRY_BACKOFF_S = (0.2, 1.0, 3.0)

    def __init__(
        self,
        path: str | Path,
        mpp_info: MppInfo,
        meta: dict[str, Any],
        *,
        reader: str = "openslide",
        slide_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        origin: str | None = None,
    ) -> None:
        location = str(path)
        self.remote = is_url(location)
        self.path: Path | str = location if self.remote else Path(path)
        self.location = location
        # TRIDENT's id: x.ome.tiff -> x; a symlink keeps its own name (the path is never resolved)
        self.slide_id = slide_id or slide_id_from_location(location, is_dir=bool(meta.get("files")))
        self.reader = reader
        self.storage_options = dict(storage_options or {})
        #: where the slide really lives when ``path`` is a staged copy (its URL); None: ``path``
        self.origin = origin
        self.mpp = float(mpp_info.mpp)
        self.mpp_source = mpp_info.source
        self.mpp_x, self.mpp_y = float(mpp_info.mpp_x), float(mpp_info.mpp_y)
        self.dimensions: tuple[int, int] = tuple(meta["dimensions"])
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(d) for d in meta["level_dimensions"])
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in meta["level_downsamples"])
        self.vendor: str = meta["vendor"]
        self.objective_power: float | None = meta.get("objective_power")
        self.properties: dict[str, str] = dict(meta.get("properties", {}))
        #: the files of a local slide made of several (a DICOM series); empty: the path itself
        self.files: tuple[Path, ...] = tuple(meta.get("files", ()))
        #: the file(s)' state when opened (:func:`zoomfeat.slide.identity.fingerprint`)
        self.opened_fingerprint: tuple[Any, ...] = tuple(meta.get("fingerprint", ()))
        self._backend: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._hash: str | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | Path,
        mpp: float | None = None,
        objective_power_fallback: bool = False,
        *,
        reader: str = "auto",
        slide_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        origin: str | None = None,
    ) -> Slide:
        """Open the slide at ``path`` (a file, a DICOM series directory or an fsspec URL) and resolve
        its MPP (``mpp=`` overrides the file).

        Args:
            reader: ``auto`` (chosen from what the path is, :func:`~zoomfeat.slide.backends.choose_reader`)
                or one of :data:`~zoomfeat.slide.backends.READERS` to force it.
            slide_id: the name the slide's bags get (default: the name it is listed under, without
                its extension).
            storage_options: fsspec options of a remote slide (endpoint, credentials ...).
            origin: the URL of which ``path`` is a local copy (``cache_dir``): named by
                :meth:`identity` and by the slide id, which defaults to the URL's name.

        Raises ``InputNotFoundError`` for a missing path and :class:`SlideError` (naming the slide)
        for anything that cannot be opened or lacks a usable resolution.
        """
        reader = check_reader(reader)
        location = str(path)
        remote = is_url(location)
        is_dir = False
        if not remote:
            local = Path(location).expanduser()
            location = str(local)
            if not local.exists():
                raise InputNotFoundError(f"no slide file at {local}")
            is_dir = local.is_dir()
            if is_dir and (reader not in ("auto", "dicom", "wsidicom") or not is_dicom_dir(local)):
                raise SlideError(
                    f"{local}: is a directory, not a slide file (a directory is a slide only when it holds "
                    "one DICOM series: .dcm files)"
                )
        chosen = choose_reader(location, is_dir) if reader == "auto" else reader
        tries = [chosen] + (list(fallbacks(location, chosen)) if reader == "auto" else [])
        backend, first_error = None, None
        for name in tries:
            try:
                backend = cls._open_backend(location, name, storage_options, remote)
                chosen = name
                break
            except SlideError as err:
                first_error = first_error or err
                if isinstance(err, InputNotFoundError):
                    break
        if backend is None:
            assert first_error is not None
            raise first_error
        props = dict(backend.properties)
        info = resolve_mpp(props, location, mpp, objective_power_fallback)
        files = tuple(getattr(backend, "files", ()))
        meta = {
            "dimensions": backend.level_dimensions[0],
            "level_dimensions": backend.level_dimensions,
            "level_downsamples": backend.level_downsamples,
            "vendor": props.get("openslide.vendor") or "unknown",
            "objective_power": _float(props, "openslide.objective-power"),
            "properties": props,
            "files": files,
            "fingerprint": fingerprint(location, files=files, storage_options=storage_options),
        }
        if origin is not None and slide_id is None:
            slide_id = slide_id_from_location(origin, is_dir=bool(files))
        slide = cls(
            location,
            info,
            meta,
            reader=chosen,
            slide_id=slide_id,
            storage_options=storage_options,
            origin=origin,
        )
        slide._backend, slide._pid = backend, os.getpid()
        if min(slide.dimensions) <= 0:
            raise SlideError(f"{location}: empty image ({slide.dimensions[0]}x{slide.dimensions[1]} px)")
        return slide

    @classmethod
    def _open_backend(
        cls, location: str, reader: str, storage_options: dict[str, Any] | None, remote: bool
    ) -> SlideBackend:
        """The backend, with :attr:`REMOTE_TRIES` tries for a remote slide; errors name the slide."""
        tries = cls.REMOTE_TRIES if remote else 1
        last: BaseException | None = None
        for attempt in range(tries):
            if attempt:
                time.sleep(cls.RETRY_BACKOFF_S[min(attempt - 1, len(cls.RETRY_BACKOFF_S) - 1)])
            try:
                return open_backend(location, reader, storage_options=storage_options)
            except SlideError:
                raise
            except (FileNotFoundError, PermissionError) as err:
                if not _connection_failed(err):
                    raise _open_error(location, err, attempt + 1) from err
                last = err
            except Exception as err:  # network/filesystem errors of fsspec and its clients
                last = err
        assert last is not None
        raise _open_error(location, last, tries) from last

    def identity(self) -> dict[str, Any]:
        """Where this slide came from: ``quickhash`` (openslide's; for the other readers the
        ``zf1:`` content hash of :func:`~zoomfeat.slide.identity.content_hash`), ``size`` in bytes
        (all files of a DICOM series together) and the resolved ``path`` (the URL of a remote slide or
        of a staged copy's ``origin``). Two slides are the
        same when quickhash and size agree; the path only informs (a moved slide folder is the same
        slide)."""
        fp = self.opened_fingerprint
        if self.remote:
            size = int(fp[0]) if fp else -1
            where = self.location
        else:
            size = sum(int(f[1]) for f in fp) if fp else -1
            where = str(Path(self.location).resolve())
        quick = str(self.properties.get(QUICKHASH_PROPERTY, ""))
        if not quick or self.reader not in ("openslide", "dicom"):
            if self._hash is None:
                try:
                    self._hash = content_hash(
                        self.location, files=self.files, storage_options=self.storage_options
                    )
                except Exception:  # identity informs; reading it must not fail a slide that reads
                    self._hash = ""
            quick = self._hash
        return {"quickhash": quick, "size": size, "path": self.origin or where}

    def fingerprint(self) -> tuple[Any, ...]:
        """The state of the slide's file(s) now (:func:`~zoomfeat.slide.identity.fingerprint`)."""
        return fingerprint(self.location, files=self.files, storage_options=self.storage_options)

    def check_unchanged(self) -> None:
        """Raise :class:`SlideChangedError` (one line naming the slide) when its file(s) changed since
        it was opened: size, modification time, inode (local) or ETag (remote). Called before a slide's
        bags are published, so rows of two versions of a file are never published together."""
        try:
            now = self.fingerprint()
        except FileNotFoundError:
            now = ()
        except Exception as err:  # an unreachable remote: not known to have changed, but not provable
            raise SlideChangedError(
                f"{self.location}: cannot check that it is unchanged ({type(err).__name__}: {err}); "
                "its bags are not published: extract it again"
            ) from err
        if now != self.opened_fingerprint:
            what = describe_change(self.opened_fingerprint, now) if now else "deleted"
            raise SlideChangedError(
                f"{self.location}: changed while it was read ({what}); its bags are not published "
                "(their rows could come from two versions of the file): extract it again once the file is stable"
            )

    @property
    def magnification(self) -> float:
        """Equivalent objective magnification, ``10 / mpp`` (not rounded)."""
        return MPP_20X * BASE_MAG / self.mpp

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def _handle(self) -> SlideBackend:
        if self._backend is None or self._pid != os.getpid():
            with self._lock:
                if self._backend is None or self._pid != os.getpid():
                    backend = self._open_backend(
                        self.location, self.reader, self.storage_options, self.remote
                    )
                    self._backend, self._pid = backend, os.getpid()
        return self._backend

    def close(self) -> None:
        with self._lock:
            if self._backend is not None and self._pid == os.getpid():
                self._backend.close()
            self._backend = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_backend"], state["_pid"], state["_lock"] = None, None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"Slide({self.location!r}, {w}x{h} px, mpp={self.mpp:g} ({self.mpp_source}), "
            f"{self.magnification:.2f}x, {self.level_count} level(s), vendor={self.vendor}, reader={self.reader})"
        )

    # ------------------------------------------------------------------ reading
    def best_level(self, downsample: float) -> int:
        """The level with the largest downsample not above ``downsample`` (0.1% tolerance)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.001 and d >= self.level_downsamples[best]:
                best = i
        return best

    def _read_rgba(self, level: int, x0: int, y0: int, w: int, h: int) -> Any:
        """Backend read (level-0 location, level size) as a PIL RGBA image; a remote slide's failed
        read is tried :attr:`REMOTE_TRIES` times (reopening it) before a :class:`SlideError` naming it."""
        tries = self.REMOTE_TRIES if self.remote else 1
        last: BaseException | None = None
        for attempt in range(tries):
            if attempt:
                time.sleep(self.RETRY_BACKOFF_S[min(attempt - 1, len(self.RETRY_BACKOFF_S) - 1)])
            try:
                backend = self._handle()
                if backend.name == "openslide" or backend.name == "dicom":
                    return backend.read_rgba(int(level), int(x0), int(y0), int(w), int(h))
                with self._lock:  # tifffile/fsspec file handles are not shared between threads
                    return backend.read_rgba(int(level), int(x0), int(y0), int(w), int(h))
            except Exception as err:
                # a handle may be unusable after an error (openslide's is): the next read reopens it
                self._backend = None
                last = err
                if isinstance(err, SlideError) and not self.remote:
                    raise
        assert last is not None
        if isinstance(last, SlideError) and tries == 1:
            raise last
        raise SlideError(
            f"{self.location}: cannot read {w}x{h} px at level {level} from level-0 ({x0}, {y0})"
            + (f" after {tries} tries" if tries > 1 else "")
            + f": {type(last).__name__}: {str(last).splitlines()[0] if str(last) else ''} "
            "(corrupt or truncated file, or the connection failed?)"
        ) from last

    @staticmethod
    def _on_white(rgba: np.ndarray) -> np.ndarray:
        """RGB uint8 of an un-premultiplied RGBA array composited onto white."""
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgba[..., :3])
        a = alpha[..., None].astype(np.uint16)
        out = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
        return out.astype(np.uint8)

    @classmethod
    def _rgb(cls, img: Any) -> np.ndarray:
        """RGB uint8 (writable) of a backend's PIL RGBA image, composited onto white. An opaque image
        (the usual case) only drops its alpha channel, in PIL: the same values as :meth:`_on_white`,
        at a quarter of the cost of numpy's strided 4 -> 3 channel copy."""
        if img.mode == "RGBA" and img.getchannel("A").getextrema()[0] == 255:
            return np.array(img.convert("RGB"))
        return cls._on_white(np.asarray(img))

    def read_level_rgb(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Raw openslide read: level-0 location, level size; RGB uint8 with transparency on white."""
        return self._rgb(self._read_rgba(level, x0, y0, w, h))

    def read_box(self, x0: float, y0: float, w0: float, h0: float, *, out_w: int, out_h: int) -> np.ndarray:
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
        # the read starts on a whole level pixel (every reader locates it there)
        start_x, start_y = math.floor(bx0 - margin), math.floor(by0 - margin)
        loc_x, loc_y = math.ceil(start_x * d - 1e-9), math.ceil(start_y * d - 1e-9)
        w = math.ceil(bx1 + margin - start_x)
        h = math.ceil(by1 + margin - start_y)
        img = self._read_rgba(level, loc_x, loc_y, w, h)
        box = (bx0 - start_x, by0 - start_y, bx1 - start_x, by1 - start_y)
        # PIL resamples RGBA in premultiplied form, so compositing onto white afterwards is exact.
        out = img.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box)
        return self._rgb(out)

    def read_region(self, x0: float, y0: float, size_px: int, mpp: float) -> np.ndarray:
        """A square RGB uint8 (size_px, size_px, 3) at ``mpp`` um/px, top-left at level-0 (x0, y0).

        The region covers ``size_px * mpp / self.mpp`` level-0 px; ``x0``/``y0`` may be fractional.
        """
        if not (mpp and mpp > 0):
            raise ValueError(f"{self.path}: target mpp must be positive, got {mpp!r}")
        extent = size_px * float(mpp) / self.mpp
        return self.read_box(x0, y0, extent, extent, out_w=size_px, out_h=size_px)

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
            out[by : by + bh, bx : bx + bw] = self.read_box(
                bx * dx, by * dy, bw * dx, bh * dy, out_w=bw, out_h=bh
            )
        return out, dx, dy
