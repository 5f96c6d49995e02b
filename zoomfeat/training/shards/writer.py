"""Writing training shards slide by slide (what ``prepare`` streams its tiles into).

Every file is written under a temporary name and renamed (fsync-ed) when complete; a slide's
record is written only after all its shard files exist, and readers find tiles through the
records only. So a killed ``prepare`` never leaves half a slide visible, and the next run redoes
exactly the slides that have no record. A writer that has accumulated ``pack_rows`` tiles of small
per-slide files at one magnification packs them (:mod:`.pack`). A data directory is appendable:
later ``prepare`` runs add slides (and packs) next to the existing ones.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoomfeat.runtime.atomic import ensure_dir, fsync_dir, fsync_file, tmp_name
from zoomfeat.runtime.errors import ShardError
from zoomfeat.training.shards.format import (
    FORMAT_VERSION,
    LATENT_SHAPE,
    MAX_GRID,
    append_rows,
    create_shard,
    ensure_dataset_info,
    grid_side,
    write_slide_table,
)
from zoomfeat.training.shards.pack import pack_slides, record_rows
from zoomfeat.training.shards.records import read_record, slide_is_done, write_record


class SlideShardWriter:
    """Streams one slide's tiles into per-magnification temporary shards; :meth:`commit` publishes.

    Use through :meth:`ShardWriter.slide`::

        with writer.slide(slide_id, source=path) as s:
            s.append(m, latents, ssl_grids, coords, tile_size_level0=tile_size_level0)
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
        self.committed = False

    def start(self, m: int, tile_size_level0: int) -> None:
        """Open mag ``m`` (so a magnification with no tissue tile is recorded with 0 rows)."""
        m = int(m)
        if m in self._files:
            return
        d = ensure_dir(self.parent.data_dir / f"m{m}", "shard directory")
        final = d / f"{self.slide_id}.h5"
        tmp = tmp_name(final)
        f = create_shard(tmp, m, ssl_channels=self.parent.ssl_channels, max_grid=self.parent.max_grid)
        self._files[m] = (tmp, final, f)
        self._size0[m] = int(tile_size_level0)

    def append(
        self, m: int, latent: np.ndarray, ssl: np.ndarray, coords: np.ndarray, *, tile_size_level0: int
    ) -> None:
        """Append tiles at magnification index ``m``.

        Args:
            latent: (N, 3, 64, 64) VQ latents (stored float16).
            ssl: (N, C, g, g) UNI grids, g = min(2^m, 8) (stored float16).
            coords: (N, 2) top-left [x, y] in level-0 pixels.
            tile_size_level0: side of a tile at ``m`` in level-0 pixels.
        """
        m = int(m)
        self.start(m, tile_size_level0)
        _, _, f = self._files[m]
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
        append_rows(f["latent"], latent.astype(np.float16, copy=False))
        append_rows(f["ssl"], ssl.astype(np.float16, copy=False))
        append_rows(f["mag"], np.full(n, m, np.uint8))
        append_rows(f["coords"], coords)
        append_rows(f["slide"], np.zeros(n, np.int32))

    def commit(self) -> dict[str, Any]:
        """Close, publish the temporary shards (fsync, rename) and write (merge) the slide's record."""
        data_dir = self.parent.data_dir
        old = read_record(data_dir, self.slide_id)
        mags: dict[str, Any] = {}
        if old is not None and old.get("config_hash") == self.parent.config_hash:
            mags.update(old.get("mags", {}))
        for m, (tmp, final, f) in sorted(self._files.items()):
            n = f["latent"].shape[0]
            write_slide_table(f, [self.slide_id], [self._size0[m]])
            f.attrs["complete"] = True
            f.close()
            fsync_file(tmp)
            os.replace(tmp, final)
            fsync_dir(final.parent)
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
        """Close and delete the temporary shards (nothing of the slide becomes visible)."""
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
    """Writes slides into a data directory (see :mod:`zoomfeat.training.shards.format` for the layout).

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
        *,
        ssl_channels: int,
        config_hash: str,
        info: Mapping[str, Any] | None = None,
        max_grid: int = MAX_GRID,
        pack_rows: int = 16384,
    ) -> None:
        self.data_dir = ensure_dir(data_dir, "training data directory")
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
            rows = sum(record_rows(self.data_dir, m, s) for s in self._pending.get(m, []))
            if rows >= self.pack_rows:
                self.pack(m)

    def pack(self, m: int) -> Path | None:
        """Pack this writer's pending per-slide files at mag ``m`` into one ``pack-*.h5`` shard."""
        slide_ids, self._pending[m] = self._pending.get(m, []), []
        return pack_slides(
            self.data_dir, m, slide_ids=slide_ids, ssl_channels=self.ssl_channels, max_grid=self.max_grid
        )

    def close(self) -> None:
        """Pack what is pending (at least two slides per magnification)."""
        for m in list(self._pending):
            self.pack(m)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
