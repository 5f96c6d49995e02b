"""Provenance: a stable hash of a run's configuration and of files it depends on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace variation; Paths and tuples become strings/lists."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, length: int = 16) -> str:
    """Short sha256 of the canonical JSON of ``obj``: equal configs give equal hashes."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_hash(path: str | Path, *, length: int = 16, chunk: int = 1 << 20) -> str:
    """Short sha256 of a file's bytes (streamed, so multi-GB checkpoints are fine)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:length]
