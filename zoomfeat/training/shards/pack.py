"""Packing: many slides' small per-slide shards of one magnification into one ``pack-*.h5``.

Readers prefer fewer, larger files. Packing is crash-safe in three ordered moves: the pack is
written under a temporary name and renamed (fsync-ed) when complete; then each slide's record is
re-pointed to its rows in the pack; then the small file is deleted. A kill at any point leaves
every record pointing at a complete file (the small one or the pack), never at a missing one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoomfeat.runtime.atomic import atomic_path
from zoomfeat.runtime.errors import ShardError
from zoomfeat.training.shards.format import append_rows, create_shard, write_slide_table
from zoomfeat.training.shards.records import read_record, write_record

#: rows copied per read/write while packing (bounded memory)
COPY_ROWS = 1024


def record_rows(data_dir: Path, m: int, slide_id: str) -> int:
    """Rows the slide's record lists at magnification index ``m`` (0 when none)."""
    rec = read_record(data_dir, slide_id)
    return int(rec["mags"][str(m)]["count"]) if rec and str(m) in rec.get("mags", {}) else 0


def _record(data_dir: Path, slide_id: str) -> dict[str, Any]:
    """The slide's record (ShardError when it has none: a slide being packed was just written)."""
    rec = read_record(data_dir, slide_id)
    if rec is None:
        raise ShardError(f"{data_dir}: slide {slide_id} has no record to pack; rerun prepare to rewrite it")
    return rec


def pack_slides(
    data_dir: Path, m: int, *, slide_ids: Sequence[str], ssl_channels: int, max_grid: int
) -> Path | None:
    """Pack the slides' current files at magnification index ``m`` into one new shard.

    Args:
        data_dir: the data directory.
        m: magnification index.
        slide_ids: committed slides whose records point at their rows (at least two, else
            nothing is done).
        ssl_channels, max_grid: the shard shapes (as in ``dataset.json``).

    Returns:
        The pack's path, or None when there was nothing to pack.
    """
    slide_ids = [s for s in slide_ids if record_rows(data_dir, m, s) > 0]
    if len(slide_ids) < 2:
        return None
    final = data_dir / f"m{m}" / f"pack-{uuid.uuid4().hex[:12]}.h5"
    entries: dict[str, dict[str, Any]] = {}
    sizes = []
    # 1. copy every slide's rows into the pack (published complete, or not at all)
    with atomic_path(final) as tmp:
        with create_shard(tmp, m, ssl_channels=ssl_channels, max_grid=max_grid) as out:
            for k, sid in enumerate(slide_ids):
                entry = _record(data_dir, sid)["mags"][str(m)]
                start = out["latent"].shape[0]
                n = int(entry["count"])
                with h5py.File(data_dir / entry["file"], "r") as src:
                    for a in range(0, n, COPY_ROWS):
                        b = min(n, a + COPY_ROWS)
                        for key in ("latent", "ssl", "mag", "coords"):
                            append_rows(out[key], src[key][a:b])
                        append_rows(out["slide"], np.full(b - a, k, np.int32))
                sizes.append(entry.get("tile_size_level0", 0))
                entries[sid] = {
                    **entry,
                    "file": final.relative_to(data_dir).as_posix(),
                    "start": start,
                    "count": n,
                }
            write_slide_table(out, slide_ids, sizes)
            out.attrs["complete"] = True
    # 2. re-point the records, 3. then drop the small files
    for sid, entry in entries.items():
        rec = _record(data_dir, sid)
        old_file = rec["mags"][str(m)]["file"]
        rec["mags"][str(m)] = entry
        write_record(data_dir, rec)
        (data_dir / old_file).unlink(missing_ok=True)
    return final
