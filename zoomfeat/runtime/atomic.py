"""Atomic, durable writes: a file (or directory) appears complete under its final name, or not at all.

Every output zoomfeat publishes -- bags, shards, checkpoints, manifests, configs, reports -- is
written under a temporary name in the same directory, flushed and ``fsync``-ed, then renamed over
the final name (``os.replace``, atomic on POSIX), and the directory is ``fsync``-ed so that the
rename itself survives a power cut. A killed process leaves at most a temporary file (hidden, with
its pid in the name), never a truncated file under a final name.

Usage::

    with atomic_path(path) as tmp:        # any writer that takes a path (h5py, torch.save, PIL ...)
        h5py.File(tmp, "w") ...
    atomic_write_text(path, text)         # small text files
    with atomic_dir(final_dir) as tmp:    # a whole directory (training checkpoints)
        ...
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zoomfeat.runtime.errors import OutputError


def tmp_name(path: Path) -> Path:
    """The temporary sibling of ``path`` this process writes: ``.{name}.tmp-{pid}``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames and new entries in directory ``path`` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """``fsync`` every file and directory under ``root``."""
    for dirpath, _, files in os.walk(os.fspath(root)):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def ensure_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create directory ``path`` (and parents); an :class:`OutputError` naming it when impossible."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(
            f"{path}: the {what} is a file, not a directory; choose another path or move the file"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"{path}: cannot create the {what} ({err.strerror or err}); choose a writable location"
        ) from err
    if not os.access(path, os.W_OK):
        raise OutputError(
            f"{path}: the {what} is not writable (read-only file system or no permission); choose another"
        )
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsync-ed and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    ensure_dir(path.parent)
    tmp = tmp_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it is fsync-ed and renamed to ``path``.

    An existing ``path`` is replaced (moved aside, then removed after the rename). On an
    exception the temporary directory is removed.
    """
    path = Path(path)
    ensure_dir(path.parent)
    tmp = tmp_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
