"""The training-shard format: constants, magnification parsing, UNI-grid pooling, ``dataset.json``.

Layout of a prepared data directory (docs/ARCHITECTURE.md, "Training")::

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

The other modules of this package write slides (:mod:`.writer`), pack them (:mod:`.pack`),
keep the per-slide records (:mod:`.records`) and read tiles back (:mod:`.reader`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoomfeat.runtime.atomic import atomic_write_text
from zoomfeat.runtime.errors import ShardError
from zoomfeat.runtime.units import NUM_MAGS, grid_side, mag_name, magnification

FORMAT_VERSION = 1
#: magnification index -> name (20x / 2^m)
MAG_NAMES = {m: mag_name(m) for m in range(NUM_MAGS)}
MAX_GRID = 8
LATENT_SHAPE = (3, 64, 64)
DATASET_FILE = "dataset.json"
RECORDS_DIR = "records"
#: dataset.json keys that every shard of a directory must agree on
DATASET_KEYS = ("format", "ssl_channels", "latent_shape", "tile_px", "max_grid", "encoder", "vq")

__all__ = [
    "FORMAT_VERSION",
    "MAG_NAMES",
    "NUM_MAGS",
    "MAX_GRID",
    "LATENT_SHAPE",
    "DATASET_FILE",
    "RECORDS_DIR",
    "ShardError",
    "ShardsNotFoundError",
    "parse_mag",
    "grid_side",
    "pool_grid",
    "dataset_info",
    "ensure_dataset_info",
]


class ShardsNotFoundError(ShardError, FileNotFoundError):
    """A training data directory that does not exist (say how to make one)."""


def parse_mag(value: Any) -> int:
    """Magnification index from ``2`` / ``"2"`` / ``"m2"`` (an index), or ``"5x"`` / ``5.0`` / ``20``
    (a magnification, which must be 20 / 2^m).

    Integers 0..7 (and their strings) are indices; floats, strings ending in ``x`` and integers
    above 7 are magnifications.

    Raises:
        ValueError: anything else (the message lists the valid indices and names).
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
            if abs(magnification(m) - mag) < 1e-6:
                return m
    choices = ", ".join(f"{m} ({n})" for m, n in MAG_NAMES.items())
    raise ValueError(f"unknown magnification {value!r}: use an index or name among {choices}")


def pool_grid(grid: np.ndarray, max_grid: int = MAX_GRID) -> np.ndarray:
    """Average-pool a (..., C, s, s) grid to at most ``max_grid`` per side (s a power of two).

    Same result as ``adaptive_avg_pool2d`` for power-of-two sides (the official dataloader's
    pooling); computed in float32.

    Args:
        grid: (..., C, s, s) UNI embeddings, s = 2^m.
    Returns:
        float32 (..., C, g, g) with g = min(s, max_grid).
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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of the data directory; :class:`ShardError` naming it when damaged."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}: not valid JSON ({err})") from err


def dataset_info(data_dir: str | Path) -> dict[str, Any] | None:
    """``dataset.json`` of a data directory, or None when it has none."""
    path = Path(data_dir) / DATASET_FILE
    return read_json(path) if path.is_file() else None


def ensure_dataset_info(data_dir: str | Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``dataset.json`` if absent, else check that ``info`` agrees with it.

    Mixing shards made with different encoders, VQ autoencoders or shapes in one directory
    would silently train on inconsistent data, so a disagreement is an error naming both.
    """
    data_dir = Path(data_dir)
    info = {"format": FORMAT_VERSION, **dict(info)}
    existing = dataset_info(data_dir)
    if existing is None:
        atomic_write_text(data_dir / DATASET_FILE, json.dumps(info, indent=2, sort_keys=True, default=str))
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
# HDF5 helpers shared by the writer and the packer


def create_shard(path: Path, m: int, *, ssl_channels: int, max_grid: int, chunk_rows: int = 1) -> h5py.File:
    """An empty, appendable shard for magnification index ``m`` (open for writing)."""
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


def append_rows(ds: h5py.Dataset, values: np.ndarray) -> None:
    """Append ``values`` along axis 0 of a resizable dataset."""
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


def write_slide_table(f: h5py.File, slide_ids: Sequence[str], tile_size_level0: Sequence[int]) -> None:
    """The ``slide_ids`` / ``tile_size_level0`` tables that the ``slide`` column indexes."""
    f.create_dataset("slide_ids", data=np.array(list(slide_ids), dtype=h5py.string_dtype()))
    f.create_dataset("tile_size_level0", data=np.asarray(tile_size_level0, dtype=np.int64))
