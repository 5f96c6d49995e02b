"""The tile store: per slide, what every ZoomLDM recipe shares (docs/tile-store.md).

A later recipe (another timestep, tap, pooling or ensemble) changes only the UNet part of the
work. The rest is the same for every recipe and is kept here, once per slide:

- the VQ-f4 latent ``z0 = VQ.encode(x)`` (float32, 3 x 64 x 64 at full size) of every kept 20x
  tile and of every kept 5x parent tile;
- the embeddings of every embedding job of the pass (the encoder families and the conditioning
  jobs ``cond@{px}``) on all 17 tiles of each parent (the 16 children, background ones too, and
  the parent tile), from which the 1x1 (20x) and 4x4 (5x) conditioning grids are built
  (``g20_i = e_i``, ``g5[c, dy, dx] = e_{4 dy + dx}[c]``);
- the tile grid (children, their parents, which are kept, the TRIDENT coords attributes).

Layout: a training data directory (``zoomfeat/training/shards/format.py``), so ``train
data_dir={store}`` trains on the store's 20x (m0) and 5x (m2) tiles as it does on ``prepare``'s
shards::

    {store}/dataset.json               what the training shards share (encoder, VQ, shapes)
    {store}/records/{slide_id}.json    the entry's key and contents; written last (its marker)
    {store}/m0/{slide_id}.h5           kept 20x tiles: latent, ssl (C, 1, 1), coords, mag, slide
    {store}/m2/{slide_id}.h5           kept 5x parents: latent, ssl (C, 4, 4), coords, mag, slide,
                                       emb/{job} (P, 17, D), the grid (children_xy, children_kept ...)

Every file is written under a temporary name, fsync-ed and renamed; the record (the marker) is
removed first and written last, and names a ``write_id`` stored in both HDF5 files, so a killed
run never leaves an entry that looks complete. An entry is *complete* only when its record parses,
both files open, carry its ``write_id`` and ``complete``, and every dataset reads to its last row;
anything else is *damaged* (recomputed). Whose entry it is (slide identity, tile grid, models,
precision) is the caller's comparison (:meth:`StoreEntry.differences`).

The latents are float32 (the training shards of ``prepare`` hold float16): a tile's feature
computed from the store then equals a fresh run's to float32 rounding. Bytes per kept 20x tile:
4 * 3 * 64 * 64 = 49,152 for its latent, plus 4 * D * 17/16 per embedding job and 4 * D for its
``ssl`` row, plus ~1/16 of that again for its parent's rows (full size, UNI D = 1024:
about 58 KB per kept 20x tile).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoomfeat.runtime.atomic import atomic_write_text, ensure_dir, fsync_dir, fsync_file, tmp_name
from zoomfeat.runtime.errors import ConfigMismatchError
from zoomfeat.runtime.provenance import config_hash

#: the store's own format (the record's ``store_format``)
STORE_FORMAT = 1
#: the training shard format the layout follows (``zoomfeat/training/shards/format.py``)
SHARD_FORMAT = 1
RECORDS_DIR = "records"
DATASET_FILE = "dataset.json"
#: 17 tiles per parent: 16 children (row-major dy, dx), then the parent tile
TILES_PER_PARENT = 17
CHILDREN = 16
#: magnification indices of the two files (20x children, 5x parents)
MAG20, MAG5 = 0, 2
#: the record keys that decide whether an entry may be reused (with the slide identity)
KEY_FIELDS = ("grid_hash", "vq", "precision", "tile_px")


class StoreMismatchError(ConfigMismatchError):
    """A tile-store entry of another slide, tiling or model under this slide id (never reused)."""


def entry_paths(store: str | os.PathLike, slide_id: str) -> dict[str, Path]:
    """The three files of a slide's entry: ``record``, ``m0`` (20x tiles), ``m2`` (5x parents)."""
    root = Path(store)
    return {
        "record": root / RECORDS_DIR / f"{slide_id}.json",
        "m0": root / f"m{MAG20}" / f"{slide_id}.h5",
        "m2": root / f"m{MAG5}" / f"{slide_id}.h5",
    }


def weights_fingerprint(state: Mapping[str, Any]) -> str:
    """sha256 (16 hex) of a module's ``state_dict()`` (float32 bytes, sorted by name): the ``vq`` of
    ``dataset.json``, computed as ``zoomfeat.training.vq.vq_fingerprint`` does."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class StoreEntry:
    """What a look at one slide's entry found.

    Attributes:
        state: ``absent`` | ``complete`` | ``damaged``.
        detail: for damage, the file and what is wrong.
        record: the parsed record (complete entries).
        paths: :func:`entry_paths`.
    """

    state: str
    paths: dict[str, Path]
    detail: str = ""
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        """``{job: {"encoder", "checkpoint", "px", "dim"}}`` of the embeddings held."""
        return dict(self.record.get("jobs", {}))

    @property
    def latents(self) -> bool:
        return bool(self.record.get("latents", False))

    def differences(self, key: Mapping[str, Any]) -> list[str]:
        """``"what: stored -> wanted"`` for every key field (:data:`KEY_FIELDS`) that differs and
        for every embedding job held by both with other weights or preprocessing; empty when the
        entry may be reused by a pass with ``key`` (a record as :class:`StoreWriter` writes it)."""
        rec, out = self.record, []
        for k in KEY_FIELDS:
            if k == "vq" and not (rec.get("vq") and key.get("vq")):
                continue  # one side holds no latents
            if rec.get(k) != key.get(k):
                if k == "grid_hash":  # the tiling settings that differ
                    old, new = rec.get("grid") or {}, key.get("grid") or {}
                    keys = sorted(set(old) | set(new), key=str)
                    out += [
                        f"tiling {g}: {old.get(g)} -> {new.get(g)}" for g in keys if old.get(g) != new.get(g)
                    ]
                    continue
                out.append(f"{k}: {rec.get(k)} -> {key.get(k)}")
        for job, spec in key.get("jobs", {}).items():
            old = rec.get("jobs", {}).get(job)
            if old is not None and old != spec:
                out.append(f"embeddings {job}: {old} -> {spec}")
        return out


def _check_file(path: Path, write_id: str, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """'' when ``path`` is a complete file of this entry with ``shapes``, else what is wrong."""
    if not path.is_file():
        return f"{path}: missing"
    try:
        with h5py.File(path, "r") as f:
            if not bool(f.attrs.get("complete", False)) or str(f.attrs.get("write_id", "")) != write_id:
                return f"{path}: unfinished or from another write"
            for name, shape in shapes.items():
                if name not in f:
                    return f"{path}: no '{name}' dataset"
                ds = f[name]
                if tuple(ds.shape) != tuple(shape):
                    return f"{path}: '{name}' has shape {tuple(ds.shape)}, the record says {tuple(shape)}"
                if shape and shape[0]:
                    ds[shape[0] - 1]  # the last row reads: not truncated
    except Exception as err:  # noqa: BLE001 - any read failure means damaged
        return f"{path}: unreadable ({type(err).__name__}: {err})"
    return ""


def inspect_entry(store: str | os.PathLike, slide_id: str) -> StoreEntry:
    """Look at a slide's entry once (the record, then each file opened once, its last rows read).

    Returns:
        A :class:`StoreEntry`: ``absent`` (no record), ``complete`` or ``damaged`` (with why).
    """
    paths = entry_paths(store, slide_id)
    rec_path = paths["record"]
    if not rec_path.is_file():
        return StoreEntry("absent", paths)
    try:
        rec = json.loads(rec_path.read_text())
        if not isinstance(rec, dict) or rec.get("store_format") != STORE_FORMAT:
            return StoreEntry(
                "damaged", paths, f"{rec_path}: not a tile-store record of format {STORE_FORMAT}"
            )
        n20, n5 = int(rec["n20"]), int(rec["n5"])
        wid = str(rec["write_id"])
        lat = tuple(int(v) for v in rec.get("latent_shape", ()))
        jobs = {str(j): int(s["dim"]) for j, s in rec.get("jobs", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return StoreEntry("damaged", paths, f"{rec_path}: unreadable record ({type(err).__name__}: {err})")
    s20: dict[str, tuple[int, ...]] = {"coords": (n20, 2), "parent_idx": (n20,)}
    s5: dict[str, tuple[int, ...]] = {
        "coords": (n5, 2),
        "children_xy": (CHILDREN * n5, 2),
        "children_kept": (CHILDREN * n5,),
        "children_tissue": (CHILDREN * n5,),
    }
    if rec.get("latents"):
        s20["latent"], s5["latent"] = (n20, *lat), (n5, *lat)
    for job, dim in jobs.items():
        s5[f"emb/{job}"] = (n5, TILES_PER_PARENT, dim)
    for key, shapes in (("m0", s20), ("m2", s5)):
        why = _check_file(paths[key], wid, shapes)
        if why:
            return StoreEntry("damaged", paths, why)
    return StoreEntry("complete", paths, record=rec)


class StoreWriter:
    """Write one slide's entry: files created at their final sizes under temporary names, filled
    parent by parent in order (:meth:`add_parent`), published by :meth:`finish`.

    Args:
        store: the store directory; slide_id: the slide.
        key: the entry's key and description (:meth:`StoreEntry.differences` compares them):
            ``slide`` (quickhash, size, path), ``grid_hash``, ``grid``, ``vq`` ('' without latents),
            ``precision``, ``tile_px``, ``jobs`` ``{job: {"encoder", "checkpoint", "px", "dim"}}``,
            ``ssl_job`` (the job written as training's ``ssl``; None: none), ``encoder`` (training's
            ``dataset.json`` value for it).
        grid: ``parents`` (P, 2), ``children_xy`` (16P, 2), ``children_kept`` (16P,),
            ``children_tissue`` (16P,), ``coords_attrs`` ``{"child": {...}, "parent": {...}}``,
            ``tile_size_level0`` ``{0: p, 2: 4p}``.
        latent_shape: (C, h, w) of a tile's latent; None: no latents (a pass without ZoomLDM).
    """

    def __init__(
        self,
        store: str | os.PathLike,
        slide_id: str,
        *,
        key: Mapping[str, Any],
        grid: Mapping[str, Any],
        latent_shape: tuple[int, int, int] | None,
    ) -> None:
        self.store, self.slide_id = Path(store), slide_id
        self.paths = entry_paths(store, slide_id)
        self.key = dict(key)
        self.write_id = uuid.uuid4().hex
        self.latent_shape = latent_shape
        kept = np.asarray(grid["children_kept"], bool)
        self.n5 = n5 = len(grid["parents"])
        self.n20 = n20 = int(kept.sum())
        self.kept = kept.reshape(n5, CHILDREN)
        self.jobs: dict[str, int] = {j: int(s["dim"]) for j, s in self.key["jobs"].items()}
        self.ssl_job: str | None = self.key.get("ssl_job")
        self.grid = grid
        self.next_parent, self.next_row = 0, 0
        #: bytes of array data the entry holds (HDF5 overhead and the record not counted): per kept
        #: 20x tile its latent, ``ssl`` (C), coords, parent_idx, mag and slide; per parent its latent,
        #: ``ssl`` (C x 4 x 4), coords, mag, slide, 17 rows of every job and its 16 children's grid
        ssl = self.jobs[self.ssl_job] if self.ssl_job is not None else 0
        lat = 4 * int(np.prod(latent_shape)) if latent_shape is not None else 0
        per20 = lat + 4 * ssl + 16 + 8 + 1 + 4
        per5 = lat + 4 * ssl * CHILDREN + 16 + 1 + 4 + 4 * TILES_PER_PARENT * sum(self.jobs.values())
        self.expected_bytes = n20 * per20 + n5 * (per5 + CHILDREN * (16 + 1 + 4))
        self.tmp = {k: tmp_name(self.paths[k]) for k in ("m0", "m2")}
        self.files: dict[str, h5py.File] = {}
        for k in ("m0", "m2"):
            ensure_dir(self.paths[k].parent, "tile store directory")
            for old in self.paths[k].parent.glob(f".{self.paths[k].name}.tmp-*"):
                old.unlink(missing_ok=True)  # a killed run's (the caller holds the slide's lock)
            self.files[k] = h5py.File(self.tmp[k], "w")
        f0, f5 = self.files["m0"], self.files["m2"]
        child_xy = np.asarray(grid["children_xy"], np.int64)
        parent_of = np.repeat(np.arange(n5, dtype=np.int64), CHILDREN)
        for f, n, m, xy in (
            (f0, n20, MAG20, child_xy[kept]),
            (f5, n5, MAG5, np.asarray(grid["parents"], np.int64)),
        ):
            if latent_shape is not None:
                f.create_dataset(
                    "latent", (n, *latent_shape), np.float32, chunks=(1, *latent_shape) if n else None
                )
            f.create_dataset("coords", data=xy.reshape(n, 2))
            f.create_dataset("mag", data=np.full(n, m, np.uint8))
            f.create_dataset("slide", data=np.zeros(n, np.int32))
            f.create_dataset("slide_ids", data=np.array([slide_id], dtype=h5py.string_dtype()))
            f.create_dataset("tile_size_level0", data=np.asarray([grid["tile_size_level0"][m]], np.int64))
            f.attrs.update(
                {"format": SHARD_FORMAT, "mag_index": m, "write_id": self.write_id, "complete": False}
            )
        f0.create_dataset("parent_idx", data=parent_of[kept])
        f5.create_dataset("children_xy", data=child_xy)
        f5.create_dataset("children_kept", data=kept)
        f5.create_dataset("children_tissue", data=np.asarray(grid["children_tissue"], np.float32))
        for job, dim in self.jobs.items():
            f5.create_dataset(f"emb/{job}", (n5, TILES_PER_PARENT, dim), np.float32,
                              chunks=(1, TILES_PER_PARENT, dim) if n5 else None)  # fmt: skip
        if self.ssl_job is not None:
            c = self.jobs[self.ssl_job]
            f0.create_dataset("ssl", (n20, c, 1, 1), np.float32)
            f5.create_dataset("ssl", (n5, c, 4, 4), np.float32)
            f0.attrs["grid_side"], f5.attrs["grid_side"] = 1, 4
            f0.attrs["ssl_channels"] = f5.attrs["ssl_channels"] = c

    def add_parent(
        self, i: int, *, emb: Mapping[str, np.ndarray], z20: np.ndarray | None, z5: np.ndarray | None
    ) -> None:
        """Parent ``i`` (parents come in order): ``emb`` ``{job: (17, D)}``, ``z20`` (n_kept_i, C, h, w)
        the latents of its kept children in row order, ``z5`` (C, h, w) its own."""
        if i != self.next_parent:
            raise RuntimeError(
                f"tile store {self.slide_id}: parent {i} written out of order ({self.next_parent} next)"
            )
        f0, f5 = self.files["m0"], self.files["m2"]
        n = int(self.kept[i].sum())
        a, b = self.next_row, self.next_row + n
        for job in self.jobs:
            f5[f"emb/{job}"][i] = emb[job]
        if self.latent_shape is not None:
            assert z20 is not None and z5 is not None
            if n:
                f0["latent"][a:b] = z20
            f5["latent"][i] = z5
        if self.ssl_job is not None:
            e = np.asarray(emb[self.ssl_job], np.float32)
            if n:
                f0["ssl"][a:b] = e[:CHILDREN][self.kept[i]][:, :, None, None]
            f5["ssl"][i] = e[:CHILDREN].reshape(4, 4, -1).transpose(2, 0, 1)
        self.next_parent, self.next_row = i + 1, b

    def finish(self) -> Path:
        """Publish the entry: close and rename both files (the old record removed first), then
        ``dataset.json`` when absent, then the record. Returns the record's path."""
        if self.next_parent != self.n5 or self.next_row != self.n20:
            raise RuntimeError(
                f"tile store {self.slide_id}: {self.next_parent}/{self.n5} parents written; not publishing"
            )
        rec_path = self.paths["record"]
        if rec_path.exists():  # no moment where an old record names the new files
            rec_path.unlink()
            fsync_dir(rec_path.parent)
        for k in ("m0", "m2"):
            f = self.files.pop(k)
            f.attrs["complete"] = True
            f.close()
            fsync_file(self.tmp[k])
            os.replace(self.tmp[k], self.paths[k])
            fsync_dir(self.paths[k].parent)
        trainable = self.latent_shape is not None and self.ssl_job is not None and self._dataset_info()
        attrs = self.grid.get("coords_attrs", {})
        size0 = self.grid["tile_size_level0"]
        record = {
            **{k: v for k, v in self.key.items()},
            "slide_id": self.slide_id,
            "store_format": STORE_FORMAT,
            "format": SHARD_FORMAT,
            "write_id": self.write_id,
            "n20": self.n20,
            "n5": self.n5,
            "latents": self.latent_shape is not None,
            "latent_shape": list(self.latent_shape or ()),
            "coords_attrs": attrs,
            "tile_size_level0": {str(m): int(v) for m, v in size0.items()},
            "config_hash": config_hash({k: self.key.get(k) for k in (*KEY_FIELDS, "jobs")}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "mags": (
                {
                    str(m): {
                        "file": f"m{m}/{self.slide_id}.h5",
                        "start": 0,
                        "count": n,
                        "tile_size_level0": int(size0[m]),
                    }  # fmt: skip
                    for m, n in ((MAG20, self.n20), (MAG5, self.n5))
                }
                if trainable
                else {}
            ),
        }
        atomic_write_text(rec_path, json.dumps(record, indent=1, sort_keys=True, default=str))
        return rec_path

    def _dataset_info(self) -> bool:
        """Write ``dataset.json`` when absent; whether it describes this entry's tiles (then the
        record lists them for training)."""
        assert self.ssl_job is not None and self.latent_shape is not None
        info = {
            "format": SHARD_FORMAT,
            "ssl_channels": self.jobs[self.ssl_job],
            "latent_shape": list(self.latent_shape),
            "tile_px": int(self.key["tile_px"]),
            "max_grid": 8,
            "encoder": self.key.get("encoder", ""),
            "vq": self.key.get("vq", ""),
        }
        path = self.store / DATASET_FILE
        if not path.is_file():
            atomic_write_text(path, json.dumps(info, indent=2, sort_keys=True))
            return True
        try:
            old = json.loads(path.read_text())
        except ValueError:
            return False
        return all(json.dumps(old.get(k)) == json.dumps(v) for k, v in info.items())

    def discard(self) -> None:
        """Close and remove the temporary files (a failed or cancelled slide); no-op once finished."""
        for k, f in list(self.files.items()):
            try:
                f.close()
            finally:
                self.files.pop(k)
                if self.tmp[k].exists():
                    self.tmp[k].unlink()


class StoreReader:
    """One complete entry's rows, parent by parent (:meth:`parent`); files opened on first use in
    each process (picklable)."""

    def __init__(self, entry: StoreEntry) -> None:
        if entry.state != "complete":
            raise ValueError(f"tile store entry {entry.paths['record']} is {entry.state}")
        self.paths = entry.paths
        self.record = entry.record
        self._files: dict[str, h5py.File] = {}
        self._offsets: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def file(self, key: str) -> h5py.File:
        if key not in self._files:
            self._files[key] = h5py.File(self.paths[key], "r")
        return self._files[key]

    def grid(self) -> dict[str, Any]:
        """The tile grid as :class:`StoreWriter` takes it."""
        f5 = self.file("m2")
        rec = self.record
        return {
            "parents": f5["coords"][:],
            "children_xy": f5["children_xy"][:],
            "children_kept": f5["children_kept"][:].astype(bool),
            "children_tissue": f5["children_tissue"][:],
            "coords_attrs": rec.get("coords_attrs", {}),
            "tile_size_level0": {int(m): int(v) for m, v in rec.get("tile_size_level0", {}).items()},
        }

    def parent(self, i: int, *, jobs: list[str], latents: bool) -> dict[str, Any]:
        """Parent ``i``: ``emb`` ``{job: float32 (17, D)}``, and with ``latents`` ``z20`` float32
        (n_kept_i, C, h, w) and ``z5`` (C, h, w)."""
        f5 = self.file("m2")
        if self._offsets is None:
            kept = f5["children_kept"][:].reshape(-1, CHILDREN)
            self._offsets = np.concatenate([[0], np.cumsum(kept.sum(1))]).astype(np.int64)
        out: dict[str, Any] = {"emb": {j: f5[f"emb/{j}"][i] for j in jobs}}
        if latents:
            a, b = int(self._offsets[i]), int(self._offsets[i + 1])
            out["z20"] = self.file("m0")["latent"][a:b]
            out["z5"] = f5["latent"][i]
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
