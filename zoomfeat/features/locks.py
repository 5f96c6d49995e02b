"""Per-slide lock files, so that two workers, shards or machines never extract the same slide.

``{out_dir}/.locks/{slide_id}.lock`` is held with an exclusive, non-blocking ``flock`` for as
long as the slide is being extracted. The kernel drops the lock when its process dies (even by
SIGKILL), so a crashed run never leaves a stale lock behind. On shared file systems ``flock``
works where the file system supports POSIX locks (NFSv4, Lustre with ``flock`` mounts, GPFS);
elsewhere, give each machine its own shard (``shard.index``/``shard.count``) instead.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class SlideLock:
    """Exclusive lock on one slide. ``acquire()`` returns False when another process holds it."""

    def __init__(self, out_dir: str | Path, slide_id: str) -> None:
        self.path = Path(out_dir) / ".locks" / f"{slide_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:  # pragma: no cover - best effort without flock
                    os.close(fd)
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError:
                os.close(fd)
                return False
            # The holder before us may have unlinked the file between our open and flock:
            # then we locked a dead inode; start again on the current file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                os.ftruncate(fd, 0)
                os.write(
                    fd, f"{os.getpid()} {os.uname().nodename if hasattr(os, 'uname') else ''}\n".encode()
                )
                return True
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
