"""Multi-scale training shards: HDF5 files per magnification, written slide by slide.

Layout of a prepared data directory::

    {data}/dataset.json                    what every shard shares (encoder, VQ, shapes, format)
    {data}/records/{slide_id}.json         per-slide resume record: where its tiles are, per mag
    {data}/m{m}/{slide_id}.h5              one slide's tiles at magnification index m ...
    {data}/m{m}/pack-{uid}.h5              ... or many slides' tiles packed into one shard

A shard holds, per tile (row):

- ``latent``  float16 (N, 3, 64, 64): the VQ-f4 pre-quantisation latent of the 256 px tile;
- ``ssl``     float16 (N, C, g, g): the raw UNI grid of the 20x tiles the tile covers
  (2^m x 2^m, average-pooled to g = min(2^m, 8));
- ``mag``     uint8 (N,): magnification index m (0=20x, 1=10x, 2=5x, ...);
- ``coords``  int64 (N, 2): top-left [x, y] in level-0 pixels;
- ``slide``   int32 (N,): row of the tile's slide in the ``slide_ids`` dataset.

Crash safety and resume. Every file is written under a temporary name and renamed when
complete; a slide's record is written (atomically) only after all its shard files exist, and
readers find tiles through the records only. So a killed ``prepare`` never leaves half a slide
visible, and the next run redoes exactly the slides that have no record. When a writer has
accumulated ``pack_rows`` tiles of small per-slide files at one magnification it packs them
into one ``pack-*.h5`` shard (fewer, larger files for readers): the pack is written and renamed
first, then the records are re-pointed to it, then the small files are deleted; a kill at any
point leaves every record pointing at a complete file. A data directory is appendable: later
``prepare`` runs add slides (and packs) next to the existing ones.

Readers (:class:`ShardIndex`, :class:`ShardReader`) open files lazily, once per process, so
any number of DataLoader workers can read the same shards.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoomfeat.runtime.errors import ShardError

FORMAT_VERSION = 1
#: magnification index -> name (20x / 2^m)
MAG_NAMES = {0: "20x", 1: "10x", 2: "5x", 3: "2.5x", 4: "1.25x", 5: "0.625x", 6: "0.3125x", 7: "0.15625x"}
NUM_MAGS = len(MAG_NAMES)
MAX_GRID = 8
LATENT_SHAPE = (3, 64, 64)
DATASET_FILE = "dataset.json"
RECORDS_DIR = "records"


def parse_mag(value: Any) -> int:
    """Magnification index from ``2`` / ``"2"`` / ``"m2"`` (an index), or ``"5x"`` / ``5.0`` / ``20``
    (a magnification, which must be 20 / 2^m).

    Integers 0..7 (and their strings) are indices; floats, strings ending in ``x`` and integers
    above 7 are magnifications.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"not a magnification: {value!r}")
    text = str(value).strip().lower()
    is_int = isinstance(value, (int, np.integer)) or (isinstance(value, str) and text.isdigit())
    if is_int and 0 <= int(text) < NUM_MAGS:
        return int(text)
    if re.fullmatch(r"m\d", text) and int(text[1:]) < NUM_MAGS:
        return int(text[1:])
    try:
        mag = float(text[:-1] if text.endswith("x") else text)
    except ValueError:
        mag = None
    if mag is not None:
        for m in range(NUM_MAGS):
            if abs(20.0 / 2**m - mag) < 1e-6:
                return m
    choices = ", ".join(f"{m} ({n})" for m, n in MAG_NAMES.items())
    raise ValueError(f"unknown magnification {value!r}: use an index or name among {choices}")


def grid_side(m: int, max_grid: int = MAX_GRID) -> int:
    """Side of the stored UNI grid at magnification index m: min(2^m, 8)."""
    return min(2**m, max_grid)


def pool_grid(grid: np.ndarray, max_grid: int = MAX_GRID) -> np.ndarray:
    """Average-pool a (..., C, s, s) grid to at most ``max_grid`` per side (s a power of two).

    Same result as ``adaptive_avg_pool2d`` for power-of-two sides (the official dataloader's
    pooling); computed in float32.
    """
    grid = np.asarray(grid, dtype=np.float32)
    s = grid.shape[-1]
    if grid.shape[-2] != s:
        raise ValueError(f"grid must be square, got {grid.shape}")
    if s <= max_grid:
        return grid
    if s % max_grid:
        raise ValueError(f"grid side {s} is not a multiple of {max_grid}")
    k = s // max_grid
    shape = grid.shape[:-2] + (max_grid, k, max_grid, k)
    return grid.reshape(shape).mean(axis=(-3, -1))


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}: not valid JSON ({err})") from err


# ----------------------------------------------------------------------------------------------
# dataset-level description


def dataset_info(data_dir: str | Path) -> dict[str, Any] | None:
    """``dataset.json`` of a data directory, or None when it has none."""
    path = Path(data_dir) / DATASET_FILE
    return _read_json(path) if path.is_file() else None


#: dataset.json keys that every shard of a directory must agree on
DATASET_KEYS = ("format", "ssl_channels", "latent_shape", "tile_px", "max_grid", "encoder", "vq")


def ensure_dataset_info(data_dir: str | Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``dataset.json`` if absent, else check that ``info`` agrees with it.

    Mixing shards made with different encoders, VQ autoencoders or shapes in one directory
    would silently train on inconsistent data, so a disagreement is an error naming both.
    """
    data_dir = Path(data_dir)
    info = {"format": FORMAT_VERSION, **dict(info)}
    existing = dataset_info(data_dir)
    if existing is None:
        _atomic_write_text(data_dir / DATASET_FILE, json.dumps(info, indent=2, sort_keys=True, default=str))
        return info
    diffs = {
        k: (existing.get(k), info.get(k))
        for k in DATASET_KEYS
        if k in info and _norm(existing.get(k)) != _norm(info.get(k))
    }
    if diffs:
        lines = "; ".join(f"{k}: directory has {a!r}, this run has {b!r}" for k, (a, b) in diffs.items())
        raise ShardError(
            f"{data_dir / DATASET_FILE}: this data directory was prepared with other settings ({lines}). Use another out_dir."
        )
    return existing


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ----------------------------------------------------------------------------------------------
# records


def record_path(data_dir: str | Path, slide_id: str) -> Path:
    return Path(data_dir) / RECORDS_DIR / f"{slide_id}.json"


def read_record(data_dir: str | Path, slide_id: str) -> dict[str, Any] | None:
    path = record_path(data_dir, slide_id)
    return _read_json(path) if path.is_file() else None


def list_records(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{slide_id: record}`` for every committed slide (temporary files ignored)."""
    rec_dir = Path(data_dir) / RECORDS_DIR
    if not rec_dir.is_dir():
        return {}
    out = {}
    for p in sorted(rec_dir.glob("*.json")):
        if p.name.startswith("."):
            continue
        out[p.stem] = _read_json(p)
    return out


def write_record(data_dir: str | Path, record: Mapping[str, Any]) -> Path:
    path = record_path(data_dir, record["slide_id"])
    _atomic_write_text(path, json.dumps(dict(record), indent=1, sort_keys=True, default=str))
    return path


def slide_is_done(data_dir: str | Path, slide_id: str, mags: Iterable[int], config_hash: str) -> bool:
    """True when the slide has a record with ``config_hash`` covering every mag in ``mags``."""
    rec = read_record(data_dir, slide_id)
    if rec is None or rec.get("config_hash") != config_hash:
        return False
    have = rec.get("mags", {})
    return all(str(m) in have and (Path(data_dir) / have[str(m)]["file"]).is_file() for m in mags)


# ----------------------------------------------------------------------------------------------
# writing


def _create_shard(path: Path, m: int, ssl_channels: int, max_grid: int, chunk_rows: int = 1) -> h5py.File:
    g = grid_side(m, max_grid)
    f = h5py.File(path, "w")
    f.create_dataset(
        "latent",
        shape=(0, *LATENT_SHAPE),
        maxshape=(None, *LATENT_SHAPE),
        dtype=np.float16,
        chunks=(chunk_rows, *LATENT_SHAPE),
    )
    f.create_dataset(
        "ssl",
        shape=(0, ssl_channels, g, g),
        maxshape=(None, ssl_channels, g, g),
        dtype=np.float16,
        chunks=(chunk_rows, ssl_channels, g, g),
    )
    f.create_dataset("mag", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(4096,))
    f.create_dataset("coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64, chunks=(4096, 2))
    f.create_dataset("slide", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(4096,))
    f.attrs["format"] = FORMAT_VERSION
    f.attrs["mag_index"] = m
    f.attrs["mag_name"] = MAG_NAMES[m]
    f.attrs["grid_side"] = g
    f.attrs["ssl_channels"] = ssl_channels
    return f


def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


def _write_slide_table(f: h5py.File, slide_ids: Sequence[str], tile_size_level0: Sequence[int]) -> None:
    f.create_dataset("slide_ids", data=np.array(list(slide_ids), dtype=h5py.string_dtype()))
    f.create_dataset("tile_size_level0", data=np.asarray(tile_size_level0, dtype=np.int64))


class SlideShardWriter:
    """Streams one slide's tiles into per-magnification temporary shards; :meth:`commit` publishes.

    Use through :meth:`ShardWriter.slide`::

        with writer.slide(slide_id, source=path) as s:
            s.append(m, latents, ssl_grids, coords, tile_size_level0)
        # committed here (files renamed, record written) unless an exception escaped
    """

    def __init__(
        self, parent: ShardWriter, slide_id: str, source: str | None, extra: Mapping[str, Any] | None
    ) -> None:
        self.parent = parent
        self.slide_id = slide_id
        self.source = source
        self.extra = dict(extra or {})
        self._files: dict[int, tuple[Path, Path, h5py.File]] = {}
        self._size0: dict[int, int] = {}
        self._started: set[int] = set()
        self.committed = False

    def start(self, m: int, tile_size_level0: int) -> None:
        """Open mag ``m`` (so a magnification with no tissue tile is recorded with 0 rows)."""
        m = int(m)
        if m in self._files:
            return
        d = self.parent.data_dir / f"m{m}"
        d.mkdir(parents=True, exist_ok=True)
        final = d / f"{self.slide_id}.h5"
        tmp = d / f".{self.slide_id}.h5.tmp-{os.getpid()}"
        f = _create_shard(tmp, m, self.parent.ssl_channels, self.parent.max_grid)
        self._files[m] = (tmp, final, f)
        self._size0[m] = int(tile_size_level0)

    def append(
        self, m: int, latent: np.ndarray, ssl: np.ndarray, coords: np.ndarray, tile_size_level0: int
    ) -> None:
        m = int(m)
        self.start(m, tile_size_level0)
        tmp, _, f = self._files[m]
        latent = np.asarray(latent)
        ssl = np.asarray(ssl)
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        n = len(latent)
        g = grid_side(m, self.parent.max_grid)
        if latent.shape[1:] != LATENT_SHAPE:
            raise ShardError(
                f"{self.slide_id} m{m}: latents must be (N, {', '.join(map(str, LATENT_SHAPE))}), got {latent.shape}"
            )
        if ssl.shape != (n, self.parent.ssl_channels, g, g):
            raise ShardError(
                f"{self.slide_id} m{m}: UNI grids must be ({n}, {self.parent.ssl_channels}, {g}, {g}), got {ssl.shape}"
            )
        if len(coords) != n:
            raise ShardError(f"{self.slide_id} m{m}: {n} latents but {len(coords)} coords")
        _append(f["latent"], latent.astype(np.float16, copy=False))
        _append(f["ssl"], ssl.astype(np.float16, copy=False))
        _append(f["mag"], np.full(n, m, np.uint8))
        _append(f["coords"], coords)
        _append(f["slide"], np.zeros(n, np.int32))

    def commit(self) -> dict[str, Any]:
        """Close, rename the temporary shards and write (merge) the slide's record."""
        data_dir = self.parent.data_dir
        old = read_record(data_dir, self.slide_id)
        mags: dict[str, Any] = {}
        if old is not None and old.get("config_hash") == self.parent.config_hash:
            mags.update(old.get("mags", {}))
        for m, (tmp, final, f) in sorted(self._files.items()):
            n = f["latent"].shape[0]
            _write_slide_table(f, [self.slide_id], [self._size0[m]])
            f.attrs["complete"] = True
            f.close()
            os.replace(tmp, final)
            mags[str(m)] = {
                "file": final.relative_to(data_dir).as_posix(),
                "start": 0,
                "count": int(n),
                "tile_size_level0": self._size0[m],
            }
        self._files.clear()
        record = {
            "slide_id": self.slide_id,
            "source": self.source,
            "config_hash": self.parent.config_hash,
            "format": FORMAT_VERSION,
            "mags": mags,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **self.extra,
        }
        write_record(data_dir, record)
        self.committed = True
        self.parent._committed(self.slide_id, record)
        return record

    def abort(self) -> None:
        for tmp, _, f in self._files.values():
            try:
                f.close()
            finally:
                tmp.unlink(missing_ok=True)
        self._files.clear()

    def __enter__(self) -> SlideShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class ShardWriter:
    """Writes slides into a data directory (see the module docstring for the layout).

    Args:
        data_dir: output directory (created).
        ssl_channels: UNI width C stored in the grids.
        config_hash: hash of the settings that shape the data; records carry it, and a slide
            is redone when its record has another hash.
        info: extra ``dataset.json`` content (encoder, vq checkpoint ...), checked against an
            existing ``dataset.json``.
        pack_rows: pack this writer's per-slide files of one magnification into one shard once
            they hold at least this many rows (0 disables packing).
    """

    def __init__(
        self,
        data_dir: str | Path,
        ssl_channels: int,
        config_hash: str,
        info: Mapping[str, Any] | None = None,
        max_grid: int = MAX_GRID,
        pack_rows: int = 16384,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ssl_channels = int(ssl_channels)
        self.config_hash = config_hash
        self.max_grid = int(max_grid)
        self.pack_rows = int(pack_rows)
        ensure_dataset_info(
            self.data_dir,
            {
                "ssl_channels": self.ssl_channels,
                "latent_shape": list(LATENT_SHAPE),
                "max_grid": self.max_grid,
                **dict(info or {}),
            },
        )
        # per mag: slide ids whose small per-slide file this writer wrote and has not packed yet
        self._pending: dict[int, list[str]] = {}

    def slide(
        self, slide_id: str, source: str | None = None, extra: Mapping[str, Any] | None = None
    ) -> SlideShardWriter:
        return SlideShardWriter(self, slide_id, source, extra)

    def is_done(self, slide_id: str, mags: Iterable[int]) -> bool:
        return slide_is_done(self.data_dir, slide_id, mags, self.config_hash)

    def _committed(self, slide_id: str, record: Mapping[str, Any]) -> None:
        if self.pack_rows <= 0:
            return
        for m_str, entry in record["mags"].items():
            m = int(m_str)
            if entry["file"] == f"m{m}/{slide_id}.h5" and entry["count"] > 0:
                pend = self._pending.setdefault(m, [])
                if slide_id not in pend:
                    pend.append(slide_id)
            rows = sum(self._rows(m, s) for s in self._pending.get(m, []))
            if rows >= self.pack_rows:
                self.pack(m)

    def _rows(self, m: int, slide_id: str) -> int:
        rec = read_record(self.data_dir, slide_id)
        return int(rec["mags"][str(m)]["count"]) if rec and str(m) in rec.get("mags", {}) else 0

    def pack(self, m: int) -> Path | None:
        """Pack this writer's pending per-slide files at mag ``m`` into one ``pack-*.h5`` shard."""
        slide_ids = [s for s in self._pending.get(m, []) if self._rows(m, s) > 0]
        self._pending[m] = []
        if len(slide_ids) < 2:
            return None
        d = self.data_dir / f"m{m}"
        uid = uuid.uuid4().hex[:12]
        final = d / f"pack-{uid}.h5"
        tmp = d / f".pack-{uid}.h5.tmp-{os.getpid()}"
        entries: dict[str, dict[str, Any]] = {}
        sizes = []
        try:
            with _create_shard(tmp, m, self.ssl_channels, self.max_grid) as out:
                for k, sid in enumerate(slide_ids):
                    rec = read_record(self.data_dir, sid)
                    entry = rec["mags"][str(m)]
                    src_path = self.data_dir / entry["file"]
                    start = out["latent"].shape[0]
                    with h5py.File(src_path, "r") as src:
                        n = int(entry["count"])
                        for a in range(0, n, 1024):
                            b = min(n, a + 1024)
                            _append(out["latent"], src["latent"][a:b])
                            _append(out["ssl"], src["ssl"][a:b])
                            _append(out["mag"], src["mag"][a:b])
                            _append(out["coords"], src["coords"][a:b])
                            _append(out["slide"], np.full(b - a, k, np.int32))
                    sizes.append(entry.get("tile_size_level0", 0))
                    entries[sid] = {
                        **entry,
                        "file": final.relative_to(self.data_dir).as_posix(),
                        "start": start,
                        "count": n,
                    }
                _write_slide_table(out, slide_ids, sizes)
                out.attrs["complete"] = True
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        # re-point the records, then drop the small files
        for sid, entry in entries.items():
            rec = read_record(self.data_dir, sid)
            old_file = rec["mags"][str(m)]["file"]
            rec["mags"][str(m)] = entry
            write_record(self.data_dir, rec)
            (self.data_dir / old_file).unlink(missing_ok=True)
        return final

    def close(self) -> None:
        """Pack what is pending (at least two slides per magnification)."""
        for m in list(self._pending):
            self.pack(m)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# reading


@dataclass
class MagIndex:
    """Tiles of one magnification: segments (file, start, count) with cumulative row offsets."""

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
    """Every committed tile of a data directory, per magnification (built from the records)."""

    def __init__(
        self, data_dir: Path, info: dict[str, Any], mags: dict[int, MagIndex], slides: list[str]
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
        """
        data_dir = Path(data_dir)
        hint = f"prepare it with `python -m zoomfeat.prepare SLIDES... out_dir={data_dir}`"
        if not data_dir.exists():
            raise FileNotFoundError(f"training data directory {data_dir} does not exist; {hint}")
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
        wanted = None if mags is None else {parse_mag(m) for m in mags}
        per_mag: dict[int, dict[str, list]] = {}
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
            mag_ix[m] = MagIndex(
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
        """Tile ``i`` of magnification ``m``: latent, ssl (float16 numpy), coords, slide id."""
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
