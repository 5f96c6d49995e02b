"""Slide identity: what a slide *is* (for resume and same-name checks) and whether it changed while read.

Two different questions:

- :func:`content_hash` -- which slide this is, for readers without openslide's quickhash
  (tiffslide, plain images, remote files): ``zf1:`` + SHA-256 of the size and the first and last
  64 KiB of the file. Like openslide's quickhash it is cheap (two small reads, also on a bucket)
  and changes when the file is rewritten; the prefix keeps it apart from openslide's hashes, which
  are only compared with each other.
- :func:`fingerprint` -- the file's state now: for local files ``(size, mtime_ns, inode)`` of
  every file of the slide (all instances of a DICOM series); for a URL its size and ``ETag`` (or
  last-modified time). :meth:`zoomfeat.slide.Slide.check_unchanged` compares the fingerprint taken
  when the slide was opened with the one just before its bags are published: any difference means
  rows from two versions of the file could be mixed, and nothing is published
  (:class:`SlideChangedError`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zoomfeat.runtime.errors import SlideError
from zoomfeat.slide.backends.common import is_url

#: bytes hashed at each end of the file by :func:`content_hash`
HASH_SPAN = 64 * 1024
#: prefix of :func:`content_hash` values (openslide's quickhash has none)
CONTENT_HASH_PREFIX = "zf1:"


class SlideChangedError(SlideError):
    """A slide file changed while it was being read (its bags are not published)."""


def remote_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """``(fsspec filesystem, path within it)`` of a URL."""
    import fsspec  # type: ignore[import-untyped]

    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, path


def remote_info(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """fsspec's ``info`` of a URL, fetched afresh (not from the filesystem's listing cache)."""
    fs, path = remote_fs(url, storage_options)
    try:
        fs.invalidate_cache(path)
    except Exception:  # not every filesystem caches, or implements invalidation
        pass
    return dict(fs.info(path))


def _remote_version(info: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "LastModified", "Last-Modified", "mtime", "updated"):
        if info.get(key):
            return f"{key}={info[key]}"
    return ""


def fingerprint(
    location: str, *, files: Sequence[Path] = (), storage_options: Mapping[str, Any] | None = None
) -> tuple[Any, ...]:
    """The state of a slide's file(s) now (see the module docstring); ``files`` lists the files of a
    local slide made of several (a DICOM series), else ``location`` is the file."""

    if is_url(location):
        info = remote_info(location, storage_options)
        return (int(info.get("size") or -1), _remote_version(info))
    out = []
    for f in files or [Path(location)]:
        st = Path(f).stat()
        out.append((Path(f).name, int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)))
    return tuple(out)


def describe_change(before: tuple[Any, ...], after: tuple[Any, ...]) -> str:
    """A few words on what differs between two fingerprints."""
    if len(before) != len(after):
        return f"{len(before)} file(s) when opened, {len(after)} now"
    if before and isinstance(before[0], int):  # remote: (size, version)
        parts = []
        if before[0] != after[0]:
            parts.append(f"size {before[0]} -> {after[0]} bytes")
        if before[1] != after[1]:
            parts.append(f"{before[1]} -> {after[1]}")
        return ", ".join(parts) or "changed"
    for b, a in zip(before, after, strict=True):
        if b != a:
            name, bs, bm, bi = b
            _, as_, am, ai = a
            if bs != as_:
                return f"{name}: size {bs} -> {as_} bytes"
            if bi != ai:
                return f"{name}: replaced by another file"
            return f"{name}: modified (mtime changed)"
    return "changed"


def content_hash(
    location: str, *, files: Sequence[Path] = (), storage_options: Mapping[str, Any] | None = None
) -> str:
    """``zf1:`` + SHA-256 over each file's size and its first and last :data:`HASH_SPAN` bytes."""

    digest = hashlib.sha256()
    if is_url(location):
        fs, path = remote_fs(location, storage_options)
        size = int(fs.size(path))
        digest.update(str(size).encode())
        digest.update(fs.cat_file(path, start=0, end=min(size, HASH_SPAN)))
        if size > HASH_SPAN:
            digest.update(fs.cat_file(path, start=max(HASH_SPAN, size - HASH_SPAN), end=size))
        return CONTENT_HASH_PREFIX + digest.hexdigest()
    for f in files or [Path(location)]:
        size = Path(f).stat().st_size
        digest.update(str(size).encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(HASH_SPAN))
            if size > HASH_SPAN:
                fh.seek(max(HASH_SPAN, size - HASH_SPAN))
                digest.update(fh.read())
    return CONTENT_HASH_PREFIX + digest.hexdigest()
