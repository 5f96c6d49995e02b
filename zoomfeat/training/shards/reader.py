"""Reading training shards: the index of every committed tile, and a lazy per-process reader.

:class:`ShardIndex` is built from the records (never from a directory listing, so half-written
files are invisible) and checked against ``dataset.json``; :class:`ShardReader` opens files
lazily, once per process, so any number of DataLoader workers can read the same shards.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoomfeat.runtime.errors import ShardError
from zoomfeat.training.shards.format import (
    DATASET_FILE,
    FORMAT_VERSION,
    LATENT_SHAPE,
    MAG_NAMES,
    MAX_GRID,
    RECORDS_DIR,
    ShardsNotFoundError,
    dataset_info,
    grid_side,
    parse_mag,
)
from zoomfeat.training.shards.records import list_records


@dataclass
class MagSegments:
    """Tiles of one magnification index: segments (file, start, count) with cumulative row offsets."""

    m: int
    files: list[str]
    seg_file: np.ndarray  # int64 (S,) index into files
    seg_start: np.ndarray  # int64 (S,)
    seg_count: np.ndarray  # int64 (S,)
    seg_slide: list[str]
    offsets: np.ndarray = field(init=False)  # int64 (S+1,) cumulative counts

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.seg_count)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[str, int]:
        """(file, row) of tile ``i`` of this magnification."""
        if not 0 <= i < len(self):
            raise IndexError(f"tile {i} out of range for m{self.m} ({len(self)} tiles)")
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.files[self.seg_file[s]], int(self.seg_start[s] + (i - self.offsets[s]))


class ShardIndex:
    """Every committed tile of a data directory, per magnification index (built from the records)."""

    def __init__(
        self, data_dir: Path, info: dict[str, Any], mags: dict[int, MagSegments], slides: list[str]
    ) -> None:
        self.data_dir = data_dir
        self.info = info
        self.mags = mags
        self.slides = slides

    @property
    def ssl_channels(self) -> int:
        return int(self.info["ssl_channels"])

    def counts(self) -> dict[int, int]:
        return {m: len(ix) for m, ix in self.mags.items()}

    def fingerprint(self) -> dict[str, int]:
        """Tiles per magnification (``{"m0": n0, ...}``): what a resumed run checks it still reads."""
        return {f"m{m}": len(ix) for m, ix in sorted(self.mags.items())}

    @classmethod
    def load(
        cls, data_dir: str | Path, mags: Iterable[Any] | None = None, check_files: bool = True
    ) -> ShardIndex:
        """Index a prepared data directory; clear errors for a missing/empty/inconsistent one.

        Args:
            mags: restrict to these magnifications (indices or names); default every one found.
            check_files: open every shard once and check its shapes against ``dataset.json``.

        Raises:
            ShardsNotFoundError: no such directory. ShardError: empty or inconsistent.
        """
        data_dir = Path(data_dir)
        hint = f"prepare it with `python -m zoomfeat.prepare SLIDES... out_dir={data_dir}`"
        if not data_dir.exists():
            raise ShardsNotFoundError(f"training data directory {data_dir} does not exist; {hint}")
        if not data_dir.is_dir():
            raise ShardError(f"training data path {data_dir} is not a directory; {hint}")
        info = dataset_info(data_dir)
        records = list_records(data_dir)
        if info is None or not records:
            raise ShardError(
                f"training data directory {data_dir} holds no prepared slides (no {DATASET_FILE} / {RECORDS_DIR}/*.json); {hint}"
            )
        if info.get("format") != FORMAT_VERSION:
            raise ShardError(
                f"{data_dir / DATASET_FILE}: shard format {info.get('format')!r}, this zoomfeat reads format {FORMAT_VERSION}"
            )
        try:
            wanted = None if mags is None else {parse_mag(m) for m in mags}
        except ValueError as err:
            raise ShardError(f"mags: {err}") from None
        per_mag: dict[int, dict[str, Any]] = {}
        for sid, rec in sorted(records.items()):
            for m_str, entry in rec.get("mags", {}).items():
                m = int(m_str)
                if (wanted is not None and m not in wanted) or int(entry["count"]) <= 0:
                    continue
                d = per_mag.setdefault(m, {"files": [], "file_ix": {}, "seg": []})
                f = entry["file"]
                if f not in d["file_ix"]:
                    d["file_ix"][f] = len(d["files"])
                    d["files"].append(f)
                d["seg"].append((d["file_ix"][f], int(entry["start"]), int(entry["count"]), sid))
        if not per_mag:
            what = "" if wanted is None else f" at magnification(s) {sorted(MAG_NAMES[m] for m in wanted)}"
            raise ShardError(f"training data directory {data_dir} holds no tiles{what}; {hint}")
        mag_ix = {}
        for m, d in sorted(per_mag.items()):
            seg = d["seg"]
            mag_ix[m] = MagSegments(
                m=m,
                files=[str(data_dir / f) for f in d["files"]],
                seg_file=np.array([s[0] for s in seg], np.int64),
                seg_start=np.array([s[1] for s in seg], np.int64),
                seg_count=np.array([s[2] for s in seg], np.int64),
                seg_slide=[s[3] for s in seg],
            )
        index = cls(data_dir, info, mag_ix, sorted(records))
        if check_files:
            index.check()
        return index

    def check(self) -> None:
        """Open every shard once: shapes, dtypes and row counts must match ``dataset.json``."""
        c = self.ssl_channels
        max_grid = int(self.info.get("max_grid", MAX_GRID))
        latent_shape = tuple(self.info.get("latent_shape", LATENT_SHAPE))
        for m, ix in self.mags.items():
            g = grid_side(m, max_grid)
            need_rows = np.zeros(len(ix.files), np.int64)
            np.maximum.at(need_rows, ix.seg_file, ix.seg_start + ix.seg_count)
            for k, path in enumerate(ix.files):
                if not os.path.isfile(path):
                    raise ShardError(
                        f"{path}: shard listed in the records is missing (re-run prepare to rebuild those slides)"
                    )
                try:
                    f = h5py.File(path, "r")
                except OSError as err:
                    raise ShardError(f"{path}: not a readable HDF5 shard ({err})") from err
                with f:
                    for key in ("latent", "ssl"):
                        if key not in f:
                            raise ShardError(
                                f"{path}: not a training shard (no '{key}' dataset; has {sorted(f.keys())})"
                            )
                    lat, ssl = f["latent"].shape, f["ssl"].shape
                    if tuple(lat[1:]) != latent_shape:
                        raise ShardError(
                            f"{path}: latents have shape {tuple(lat[1:])}, expected {latent_shape} as in {DATASET_FILE}"
                        )
                    if tuple(ssl[1:]) != (c, g, g):
                        raise ShardError(
                            f"{path}: UNI grids have shape {tuple(ssl[1:])}, expected {(c, g, g)} for magnification "
                            f"{MAG_NAMES[m]} with {c} channels as in {DATASET_FILE}"
                        )
                    if lat[0] != ssl[0] or lat[0] < need_rows[k]:
                        raise ShardError(
                            f"{path}: holds {lat[0]} latents and {ssl[0]} grids, the records need {need_rows[k]} rows"
                        )


class ShardReader:
    """Reads tiles through a :class:`ShardIndex`, opening files lazily (per process, LRU-capped).

    Safe to pickle into DataLoader workers: handles are dropped on pickling and reopened on
    first use in each process.
    """

    def __init__(self, index: ShardIndex, max_open: int = 64) -> None:
        self.index = index
        self.max_open = int(max_open)
        self._handles: OrderedDict[str, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def _file(self, path: str) -> h5py.File:
        if self._pid != os.getpid():  # forked worker: never reuse the parent's handles
            self._handles = OrderedDict()
            self._pid = os.getpid()
        f = self._handles.get(path)
        if f is None:
            try:
                f = h5py.File(path, "r")
            except OSError as err:
                raise ShardError(f"{path}: cannot open training shard ({err})") from err
            self._handles[path] = f
            while len(self._handles) > self.max_open:
                _, old = self._handles.popitem(last=False)
                old.close()
        else:
            self._handles.move_to_end(path)
        return f

    def read(self, m: int, i: int) -> dict[str, Any]:
        """Tile ``i`` of magnification index ``m``: latent (3, 64, 64) and ssl (C, g, g) float16
        numpy, coords (2,) int64 level-0 px, slide id."""
        ix = self.index.mags[m]
        path, row = ix.locate(i)
        f = self._file(path)
        latent = f["latent"][row]
        ssl = f["ssl"][row]
        coords = f["coords"][row]
        slide = f["slide_ids"][f["slide"][row]]
        return {
            "latent": latent,
            "ssl": ssl,
            "mag": m,
            "coords": coords,
            "slide_id": slide.decode() if isinstance(slide, bytes) else str(slide),
        }

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()
