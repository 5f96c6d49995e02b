"""Per-slide resume records of a training data directory (``records/{slide_id}.json``).

A record is the only way readers find a slide's tiles: it names, per magnification index, the
shard file and the rows (``start``, ``count``) holding them, and the hash of the settings that
made them. It is written atomically, and only after every shard file it names is complete, so a
killed ``prepare`` never leaves half a slide visible.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from zoomfeat.runtime.atomic import atomic_write_text
from zoomfeat.training.shards.format import RECORDS_DIR, read_json


def record_path(data_dir: str | Path, slide_id: str) -> Path:
    return Path(data_dir) / RECORDS_DIR / f"{slide_id}.json"


def read_record(data_dir: str | Path, slide_id: str) -> dict[str, Any] | None:
    """The slide's record, or None when the slide is not committed."""
    path = record_path(data_dir, slide_id)
    return read_json(path) if path.is_file() else None


def list_records(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{slide_id: record}`` for every committed slide (temporary files ignored)."""
    rec_dir = Path(data_dir) / RECORDS_DIR
    if not rec_dir.is_dir():
        return {}
    out = {}
    for p in sorted(rec_dir.glob("*.json")):
        if p.name.startswith("."):
            continue
        out[p.stem] = read_json(p)
    return out


def write_record(data_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write (replace) a slide's record atomically and durably."""
    path = record_path(data_dir, record["slide_id"])
    atomic_write_text(path, json.dumps(dict(record), indent=1, sort_keys=True, default=str))
    return path


def slide_is_done(data_dir: str | Path, slide_id: str, mags: Iterable[int], config_hash: str) -> bool:
    """True when the slide has a record with ``config_hash`` covering every mag in ``mags``."""
    rec = read_record(data_dir, slide_id)
    if rec is None or rec.get("config_hash") != config_hash:
        return False
    have = rec.get("mags", {})
    return all(str(m) in have and (Path(data_dir) / have[str(m)]["file"]).is_file() for m in mags)
