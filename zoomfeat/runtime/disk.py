"""Free space: check before a unit of work is computed, and one line when a write finds the disk full.

A cohort run writes for hours; when its disk fills, two things must not happen: hours of compute
spent on a slide whose file then cannot be written, and HDF5's raw ``RuntimeError: Disable slist
on flush dest failure failed`` as the only word. So a run checks, before computing a unit, that the
unit's expected bytes fit (:func:`check_free_space`), and turns a write that fails for lack of
space anyway (another process filled the disk meanwhile) into the same one-line
:class:`DiskFullError` (:func:`is_disk_full`, :func:`disk_full_error`). Finished files are never
touched (every output is published by an atomic rename); the line names the directory, the space
needed and the space free, and a plain rerun continues once space is freed.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from zoomfeat.runtime.errors import OutputError

#: kept free beyond a unit's expected bytes: HDF5 metadata, attributes, logs, the file system's own
MARGIN_BYTES = 1 << 20


class DiskFullError(OutputError):
    """Not enough free space in an output directory (names it, the space needed and the space free)."""


def human_bytes(n: float) -> str:
    """``1.5 GB`` (powers of 1000, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def free_bytes(directory: str | os.PathLike[str]) -> int:
    """Free bytes for an unprivileged writer in the file system holding ``directory`` (or its
    nearest existing parent)."""
    p = Path(directory)
    while not p.exists() and p.parent != p:
        p = p.parent
    return shutil.disk_usage(p).free


def check_free_space(
    directory: str | os.PathLike[str],
    needed_bytes: int,
    *,
    what: str,
    margin: int = MARGIN_BYTES,
    instead: str = "another out_dir",
) -> None:
    """:class:`DiskFullError` unless ``needed_bytes + margin`` fit in ``directory``'s file system.

    Args:
        what: the unit of work, for the message (``"slide X's bags"``).
        instead: what else to choose, for the message (``"another store dir"``).
    """
    free = free_bytes(directory)
    if free < needed_bytes + margin:
        raise DiskFullError(
            f"{directory}: not enough free space for {what} (needs about {human_bytes(needed_bytes + margin)}, "
            f"{human_bytes(free)} free); free some space or choose {instead}, then rerun the same "
            "command (finished files are kept)"
        )


def is_disk_full(err: BaseException, directory: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``err`` (or an error it was raised from) is a write refused for lack of space:
    ``OSError`` ENOSPC/EDQUOT, or an HDF5 error whose text carries ``errno = 28`` / "No space
    left on device" (h5py raises those as plain ``OSError``/``RuntimeError`` without an errno).
    With ``directory``: also an ``OSError``/``RuntimeError`` of any text while that file system
    has less than :data:`MARGIN_BYTES` free (HDF5's flush failure, ``Disable slist on flush dest
    failure failed``, names no cause)."""
    if (
        directory is not None
        and isinstance(err, (OSError, RuntimeError))
        and free_bytes(directory) < MARGIN_BYTES
    ):
        return True
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full_error(directory: str | os.PathLike[str], *, what: str) -> DiskFullError:
    """The one line for a write into ``directory`` that failed for lack of space."""
    return DiskFullError(
        f"{directory}: the disk is full ({human_bytes(free_bytes(directory))} free) while writing {what}; "
        "nothing of it was published and finished files are kept: free some space or choose another "
        "out_dir, then rerun the same command"
    )
