"""Streaming, atomic writing of one slide's feature bags (any sets) and its two coords files.

The row count of every bag is known from the tile grid before any model runs, so each bag is
created at its final size under a temporary name (``.{slide_id}.h5.tmp-{pid}``, from
:func:`zoomfeat.runtime.atomic.atomic_path`) and filled parent by parent as features come out of
the models: memory stays flat however large the slide. Only when every row is written does each
file get ``complete=True`` and get fsync-ed and renamed to its final name. A killed run leaves only
hidden temporary files (removed by the next run that takes the slide's lock), never a truncated
bag under a final name. Every block of rows is checked to be finite: NaN or inf (an fp16
overflow, say) fails the slide (:class:`NonFiniteFeaturesError`) and publishes nothing.

The writer writes exactly the sets it is given (the families a run computes,
:mod:`zoomfeat.features.families`) and only the coords files it is told to: files of families
that are already complete are never opened, so they stay byte-identical.

A fused set can also be filled from its family's 20x and 5x bags on disk
(:meth:`SlideBagWriter.write_fused_from`, with the tile layout of :func:`bag_layout`): the
rows a run with ``bags.fused=derived`` left to readers, written later without any model.

The layout is :mod:`zoomfeat.bags` (TRIDENT's), through its own helpers.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from zoomfeat.bags import (
    FEATURE_DTYPES,
    FEATURE_SETS,
    PerMag,
    _decode_attr,
    _write_coords,
    bag_path,
    fill_patches,
    patches_path,
    set_magnification,
    storage_rows,
    write_file_attrs,
)
from zoomfeat.features.fuse import fuse
from zoomfeat.runtime.atomic import atomic_path
from zoomfeat.runtime.errors import ZoomfeatError
from zoomfeat.runtime.units import TILE_PX, TilePx

#: a check run right before the temporaries are renamed into place; raising stops the publication
PublishCheck = Callable[[], None]


class NonFiniteFeaturesError(ZoomfeatError, ValueError):
    """A model produced NaN or inf features: the slide fails, nothing is published."""


class _Aborted(Exception):
    """Passed to the temporaries' contexts on abort: remove them, publish nothing."""


def slide_outputs(
    out_dir: str | Path,
    slide_id: str,
    *,
    tile_px: int = TILE_PX,
    sets: Iterable[str] = FEATURE_SETS,
    coords: bool = True,
) -> dict[str, Path]:
    """Final paths of one slide's outputs: ``sets`` (default the six classic ones) and, with
    ``coords``, ``patches_20x`` / ``patches_5x``."""
    paths = {name: bag_path(out_dir, name, slide_id, tile_px) for name in sets}
    if coords:
        paths["patches_20x"] = patches_path(out_dir, slide_id, 20, tile_px)
        paths["patches_5x"] = patches_path(out_dir, slide_id, 5, tile_px)
    return paths


def remove_stale_temporaries(paths: Mapping[str, Path]) -> list[Path]:
    """Delete leftover ``.{name}.tmp-*`` files of these outputs (call only while holding the slide lock).

    The pattern is :func:`zoomfeat.runtime.atomic.tmp_name`'s, with any pid.
    """
    removed = []
    for path in paths.values():
        if path.parent.is_dir():
            for tmp in path.parent.glob(f".{path.name}.tmp-*"):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def bag_layout(parts: PerMag[Path]) -> tuple[PerMag[np.ndarray], PerMag[dict[str, Any]], np.ndarray]:
    """The tile layout stored in a family's 20x and 5x bags: ``(coords, coords attributes,
    parent_idx)`` (the 20x bag's ``parent_idx``), what :class:`SlideBagWriter` takes instead of a
    tile grid when a slide's fused files are derived from its bags (one open per file)."""
    coords: dict[int, np.ndarray] = {}
    attrs: dict[int, dict[str, Any]] = {}
    parent_idx = np.zeros(0, np.int64)
    for mag, path in parts.items():
        with h5py.File(path, "r") as f:
            coords[mag] = np.asarray(f["coords"][()], np.int64).reshape(-1, 2)
            attrs[mag] = {k: _decode_attr(v) for k, v in f["coords"].attrs.items()}
            if mag == 20:
                parent_idx = np.asarray(f["parent_idx"][()], np.int64)
    return PerMag(x20=coords[20], x5=coords[5]), PerMag(x20=attrs[20], x5=attrs[5]), parent_idx


#: room reserved in a new bag beyond its rows (HDF5's superblock, object headers, chunk index, attributes)
RESERVE_OVERHEAD_BYTES = 1 << 16


def _reserve(f: h5py.File, row_bytes: int) -> None:
    """Reserve the disk blocks a new bag will need, past its current end, before HDF5 writes to it.

    A disk that fills up while a slide is written then fails here, on a file HDF5 has written
    nothing to yet, with a plain ``OSError`` (ENOSPC): HDF5 never meets a failed write, which it
    cannot recover from (its file stays open and the interpreter crashes at exit). Linux's
    ``fallocate(FALLOC_FL_KEEP_SIZE)`` reserves the blocks without changing the file's size, so
    HDF5 sees the file it made; :func:`_release_reserve` frees what was not used once it is
    closed. Where ``fallocate`` is missing the free-space check before each slide still applies.
    """
    fd = f.id.get_vfd_handle()
    if _fallocate is None:
        return
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, row_bytes + RESERVE_OVERHEAD_BYTES) != 0:
        code = ctypes.get_errno()
        if code in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        raise OSError(code, os.strerror(code), f.filename)


def _release_reserve(path: Path) -> None:
    """Free the blocks reserved past a closed file's end (truncating to its own size does)."""
    try:
        os.truncate(path, path.stat().st_size)
    except OSError:
        pass


def _libc_fallocate() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    fn.restype = ctypes.c_int
    return fn


_FALLOC_FL_KEEP_SIZE = 1
_fallocate = _libc_fallocate()


class SlideBagWriter:
    """Write one slide's bags row block by row block; ``finish()`` publishes them atomically.

    Every file is opened once, for writing, under its temporary name: the bags here, the coords
    files in :meth:`finish`.

    Args:
        out_dir: the output root.
        slide_id: file stem used for every file name.
        dims: ``{feature_set: D}`` of the sets to write (any names ending in _20x, _5x, _fused).
        coords: int64 (N20, 2) kept-children and (N5, 2) parent coordinates, level-0 px.
        coords_attrs: TRIDENT attributes of the ``coords`` datasets of each magnification.
        parent_idx: int64 (N20,) row of each 20x tile's parent in the 5x bags.
        attrs: file attributes for every file; ``set_attrs`` adds per-set ones (a family's
            config hash and recipe among them).
        tile_px: tile size in the directory names.
        chunk_rows: HDF5 chunk height of ``features``.
        write_coords: magnifications (20, 5) whose coords file is written; patches_attrs: the
            coords files' own attributes (added to ``attrs``: the grid hash).
        dtype: storage dtype of ``features`` (``bags.dtype``: float16 | float32); a float16 value
            beyond its range fails the slide (:class:`~zoomfeat.bags.FeatureRangeError`).
    """

    def __init__(
        self,
        out_dir: str | Path,
        slide_id: str,
        *,
        dims: Mapping[str, int],
        coords: PerMag[np.ndarray],
        coords_attrs: PerMag[Mapping[str, Any]],
        parent_idx: np.ndarray,
        attrs: Mapping[str, Any],
        set_attrs: Mapping[str, Mapping[str, Any]] | None = None,
        tile_px: TilePx = TILE_PX,
        chunk_rows: int = 1024,
        write_coords: Sequence[int] = (20, 5),
        patches_attrs: Mapping[str, Any] | None = None,
        dtype: str = "float32",
    ) -> None:
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"bag dtype must be one of {', '.join(FEATURE_DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        mags = {name: set_magnification(name) for name in dims}
        unknown = [name for name, m in mags.items() if m is None]
        if unknown:
            raise ValueError(f"feature sets {unknown} do not end in _20x, _5x or _fused")
        self.slide_id = slide_id
        self.paths = slide_outputs(out_dir, slide_id, tile_px=tile_px, sets=dims)
        self.write_coords = tuple(write_coords)
        self.patches_attrs = dict(patches_attrs or {})
        self.coords = {mag: np.asarray(xy, np.int64).reshape(-1, 2) for mag, xy in coords.items()}
        self.coords_attrs = {mag: dict(a) for mag, a in coords_attrs.items()}
        self.attrs = dict(attrs)
        self.parent_idx = np.asarray(parent_idx, np.int64)
        if len(self.parent_idx) != len(self.coords[20]):
            raise ValueError(
                f"{len(self.coords[20])} 20x coords but {len(self.parent_idx)} parent_idx entries"
            )
        self.rows_written = {name: 0 for name in dims}
        #: bytes of array data this writer publishes (features, coords, parent_idx; HDF5 overhead not counted)
        self.expected_bytes = sum(16 * len(self.coords[m]) for m in self.write_coords)
        for name, m in mags.items():
            rows = len(self.coords[int(m or 0)])
            itemsize = np.dtype(dtype).itemsize
            self.expected_bytes += rows * (itemsize * int(dims[name]) + 16 + (8 if m == 20 else 0))
        self._files: dict[str, h5py.File] = {}
        self._row_bytes: dict[str, int] = {}  # each bag's bytes of rows (reserve)
        self._tmp: dict[str, Path] = {}  # each bag's temporary path
        # one atomic_path per file: closing the stack normally publishes them, with an error removes them
        self._temporaries = ExitStack()
        try:
            for name, mag in mags.items():
                assert mag is not None
                tmp = self._temporaries.enter_context(atomic_path(self.paths[name]))
                f = h5py.File(tmp, "w")
                self._files[name] = f
                self._tmp[name] = Path(tmp)
                n, d = len(self.coords[mag]), int(dims[name])
                self._row_bytes[name] = n * (np.dtype(dtype).itemsize * d + 16 + (8 if mag == 20 else 0))
                chunks = (max(1, min(chunk_rows, n)), d) if n and d else True
                f.create_dataset(
                    "features", shape=(n, d), dtype=np.dtype(dtype), chunks=chunks, maxshape=(None, d)
                )
                _write_coords(f, self.coords[mag], self.coords_attrs[mag])
                if mag == 20:  # the 20x-based sets carry parent_idx
                    f.create_dataset("parent_idx", data=self.parent_idx)
                write_file_attrs(
                    f, {**self.attrs, **dict((set_attrs or {}).get(name, {})), "feature_set": name}
                )
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` (n, D) of feature set ``name`` at rows ``start .. start+n``."""
        rows = np.asarray(rows, dtype=np.float32)
        ds = self._files[name]["features"]
        if rows.ndim != 2 or rows.shape[1] != ds.shape[1] or start < 0 or start + len(rows) > ds.shape[0]:
            raise ValueError(
                f"{self.paths[name]}: cannot write rows {start}..{start + len(rows)} of shape {rows.shape} into {ds.shape}"
            )
        if len(rows):
            finite = np.isfinite(rows)
            if not finite.all():
                raise NonFiniteFeaturesError(self._non_finite_message(name, start, rows, finite))
            where = f"slide '{self.slide_id}', feature set {name}, rows {start}..{start + len(rows)}"
            ds[start : start + len(rows)] = storage_rows(rows, self.dtype, where=where)
        self.rows_written[name] += len(rows)

    def write_fused_from(self, name: str, parts: PerMag[Path], *, block_rows: int = 4096) -> None:
        """Write every row of the fused set ``name`` from its family's 20x and 5x bags on disk.

        Row ``i`` is ``concat(f20[i], f5[parent_idx[i]])`` (:func:`~zoomfeat.features.fuse.fuse`),
        read ``block_rows`` 20x rows at a time (the 5x features whole), as float32 then stored as
        this writer's dtype: float16 bags give float16 rows back exactly (a cast of a
        concatenation is the concatenation of the casts), so the file equals the one a run
        computing the rows writes. The bags' coords and ``parent_idx`` must be this writer's.

        Raises:
            ValueError: the bags' tiles are not this writer's (one line naming the 20x bag).
        """
        with h5py.File(parts.x20, "r") as b20, h5py.File(parts.x5, "r") as b5:
            f5 = np.asarray(b5["features"][()], np.float32)
            pidx = np.asarray(b20["parent_idx"][()], np.int64)
            ds20 = b20["features"]
            same = np.array_equal(np.asarray(b20["coords"][()], np.int64).reshape(-1, 2), self.coords[20])
            if not same or not np.array_equal(pidx, self.parent_idx) or len(f5) != len(self.coords[5]):
                raise ValueError(
                    f"{parts.x20}: its tiles are not those of slide '{self.slide_id}' now "
                    f"({ds20.shape[0]} 20x and {len(f5)} 5x rows vs {len(self.coords[20])} and "
                    f"{len(self.coords[5])}); delete the slide's bags and extract it again"
                )
            for start in range(0, ds20.shape[0], block_rows):
                rows = np.asarray(ds20[start : start + block_rows], np.float32)
                self.write(name, start, fuse(rows, f5, pidx[start : start + block_rows]))

    def read_back(self, name: str) -> np.ndarray:
        """The ``features`` of set ``name`` as written so far (float32, as stored), from the open
        temporary file (no new open)."""
        return np.asarray(self._files[name]["features"][()], dtype=np.float32)

    def _non_finite_message(self, name: str, start: int, rows: np.ndarray, finite: np.ndarray) -> str:
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        kinds = ", ".join(k for k, m in (("NaN", np.isnan(rows)), ("inf", np.isinf(rows))) if m.any())
        precision = self.attrs.get("precision", "?")
        advice = (
            "fp16 overflows easily: rerun with precision=fp32 or precision=bf16"
            if precision == "fp16"
            else "rerun with precision=fp32 (bf16 if memory is short; avoid fp16), and check the model weights"
        )
        return (
            f"slide '{self.slide_id}', feature set {name}: {int((~finite).sum())} non-finite value(s) ({kinds}) "
            f"in {len(bad_rows)} row(s) from row {start + int(bad_rows[0])} (precision={precision}); "
            f"not publishing the bags: {advice}"
        )

    def finish(self, *, before_publish: Sequence[PublishCheck] = ()) -> dict[str, Path]:
        """Check every row was written, mark complete, write the coords files, run ``before_publish``
        and rename everything to the final names; returns the paths.

        ``before_publish``: checks run when every file is complete under its temporary name and
        nothing is renamed yet; one that raises publishes nothing (the temporaries are removed).
        Publication order: the coords files first, the bags last (a family counts as done only
        when its bags exist).
        """
        for name, f in self._files.items():
            n = f["features"].shape[0]
            if self.rows_written[name] != n:
                raise RuntimeError(
                    f"{self.paths[name]}: {self.rows_written[name]} of {n} rows written; not publishing an incomplete bag"
                )
        for name, f in self._files.items():
            f.attrs["complete"] = True
            f.close()
            _release_reserve(self._tmp[name])
        self._files.clear()
        try:
            # entered last, renamed first (the stack unwinds in reverse): 20x coords, 5x coords, bags
            for mag in reversed(self.write_coords):
                tmp = self._temporaries.enter_context(atomic_path(self.paths[f"patches_{mag}x"]))
                with h5py.File(tmp, "w") as f:
                    fill_patches(f, self.coords[mag], self.coords_attrs[mag],
                                 {**self.attrs, **self.patches_attrs, "feature_set": "patches"})  # fmt: skip
            for check in before_publish:
                check()
        except BaseException:
            self.abort()
            raise
        self._temporaries.close()  # fsync, rename, fsync the directory: each file appears complete
        return dict(self.paths)

    def reserve(self) -> None:
        """Reserve every open bag's disk blocks now (:func:`_reserve`): call it once the free
        space is known to suffice, before any row is computed."""
        for name, f in self._files.items():
            _reserve(f, self._row_bytes[name])

    def abort(self) -> None:
        """Close and delete every temporary file (nothing is published)."""
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a broken file must not mask the first error
                pass
        self._files.clear()
        self._temporaries.__exit__(_Aborted, _Aborted(), None)

    def __enter__(self) -> SlideBagWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None or self._files:
            self.abort()
