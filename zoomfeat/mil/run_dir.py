"""One benchmark run's outputs belong to one run: a lock, a staging directory, one swap.

A run never writes into ``out_dir`` itself. :class:`RunDirectory`:

1. takes an exclusive lock, ``{parent}/.{name}.lock`` (``fcntl.flock``, released by the kernel
   when the process dies, even by ``SIGKILL``); a second run into the same ``out_dir`` is refused
   with one line naming the pid that holds it (:class:`~zoomfeat.runtime.errors.OutputError`);
2. writes everything into a fresh staging directory beside it, ``{parent}/.{name}.run-{pid}``;
3. when the run has finished, swaps the staging directory with ``out_dir`` in one
   ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames), then removes the previous run's
   directory. Hydra's ``.hydra/`` logs are carried over from the previous directory.

So readers of ``out_dir`` see the previous run's complete outputs until the instant the new run's
complete outputs replace them: never a mix of two runs, never a partial run. ``SIGTERM``, ``Ctrl-C``
(SIGINT) or SIGUSR1 while the run holds the directory removes the staging directory, prints one
line (``zoomfeat bench: stopped by SIGTERM: ...``) and ends the process at once with status 128 +
signal (the handler does it itself, :func:`zoomfeat.runtime.stopping.exit_at_once`: an exception
raised from a signal handler can land in a garbage collector callback, where Python ignores it and
the run would go on); the swap itself runs with those signals blocked, so it is never cut in half.
Errors remove the staging directory too. A ``SIGKILL``-ed run's staging directory is removed by the
next run into that ``out_dir``.

``out_dir`` is replaced as a whole, so it must hold a benchmark run (``run.json`` or
``splits.csv``; Hydra's ``.hydra/`` aside) or nothing: a directory holding other files is refused
rather than deleted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from zoomfeat.runtime.atomic import ensure_dir, fsync_dir, fsync_tree
from zoomfeat.runtime.errors import OutputError
from zoomfeat.runtime.stopping import STOP_SIGNALS, exit_at_once

#: files that mark a directory as a benchmark run's (``run.json``: a finished one; ``splits.csv``:
#: the first file earlier versions wrote)
RUN_MARKERS = ("run.json", "splits.csv")
#: entries of ``out_dir`` that are not the run's outputs and survive a swap (Hydra's logs)
CARRIED = (".hydra",)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the call is unavailable (other systems, old kernels, some file systems)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


class RunDirectory:
    """Lock ``out_dir``, stage a run beside it and publish it whole (module docstring).

    Usage::

        with RunDirectory(out_dir) as run:
            write outputs under run.work        # the staging directory
            run.publish()                       # now out_dir holds them, and only them

    Leaving the block without :meth:`publish` (an error, ``SIGTERM``, ``Ctrl-C``, SIGUSR1) removes
    the staging directory and leaves ``out_dir`` untouched.

    Args:
        out_dir: the run's output directory (replaced as a whole by :meth:`publish`).
        inputs: ``{setting: path}`` of the run's inputs (``task.labels``, ``task.bags``); one inside
            ``out_dir`` is refused, since the swap would delete it.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    ) -> None:
        self.final = Path(out_dir).expanduser().resolve()  # a symlinked out_dir: its target is swapped
        self.inputs = dict(inputs or {})
        self.parent = self.final.parent
        self.lock_path = self.parent / f".{self.final.name}.lock"
        self.work = self.parent / f".{self.final.name}.run-{os.getpid()}"
        self._lock: IO[str] | None = None
        self._saved_handlers: dict[signal.Signals, object] = {}
        self.published = False

    # -------------------------------------------------------------------- set-up
    def __enter__(self) -> RunDirectory:
        ensure_dir(self.parent, "parent of the benchmark output directory")
        self._acquire()
        try:
            self._check_replaceable()
            self._check_inputs()
            for stale in self.parent.glob(f".{self.final.name}.run-*"):  # SIGKILL-ed runs' (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            self.work.mkdir()
            self._install_stop_handlers()
        except BaseException:
            self._release()
            raise
        return self

    def _acquire(self) -> None:
        fh = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise OutputError(
                f"{self.final}: another benchmark run (pid {holder}) is writing this out_dir; "
                "wait for it to finish or choose another out_dir="
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock = fh

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def _check_replaceable(self) -> None:
        """``out_dir`` is absent, empty, or a benchmark run's: else refuse (never delete user files)."""
        if not self.final.exists():
            return
        if not self.final.is_dir():
            raise OutputError(
                f"{self.final}: the benchmark output directory is a file; choose another out_dir="
            )
        entries = sorted(p.name for p in self.final.iterdir() if p.name not in CARRIED)
        if entries and not any((self.final / m).is_file() for m in RUN_MARKERS):
            shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
            raise OutputError(
                f"{self.final}: out_dir holds files that are not a benchmark run's ({shown}); a run replaces "
                "its out_dir as a whole, so choose a new or empty out_dir="
            )

    def _check_inputs(self) -> None:
        """The run's inputs must not lie inside ``out_dir``: the swap would delete them."""
        for key, value in self.inputs.items():
            if not value or str(value).startswith("pkg:"):
                continue
            path = Path(str(value)).expanduser().resolve()
            if path == self.final or self.final in path.parents:
                raise OutputError(
                    f"{value} ({key}=) lies inside out_dir {self.final}, which each run replaces as a whole; "
                    "move it out of out_dir or choose another out_dir="
                )

    def _install_stop_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers live in the main thread; elsewhere the signals keep theirs

        def stop(signum: int, frame: FrameType | None) -> None:
            if self.published:  # the swap is done: the outputs are whole
                exit_at_once("bench", signum, f"the run had finished; {self.final} holds its outputs")
            shutil.rmtree(self.work, ignore_errors=True)
            exit_at_once(  # the kernel releases the lock
                "bench",
                signum,
                f"nothing of this run was published (its staging directory removed); {self.final} is left as "
                "it was; rerun the same command to run the benchmark again",
            )

        self._saved_handlers = {s: signal.signal(s, stop) for s in STOP_SIGNALS}

    def _restore_stop_handlers(self) -> None:
        for s, handler in self._saved_handlers.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._saved_handlers = {}

    # -------------------------------------------------------------------- publish
    def final_path(self, path: str | os.PathLike[str]) -> Path:
        """Where a file written under :attr:`work` lives once published."""
        return self.final / Path(path).relative_to(self.work)

    def publish(self) -> Path:
        """Make the staged outputs ``out_dir``: one atomic swap, then remove the previous run's.

        Returns:
            ``out_dir``.
        """
        for name in CARRIED:  # Hydra's logs of earlier runs and of this one stay with out_dir
            old = self.final / name
            if old.exists() and not (self.work / name).exists():
                os.replace(old, self.work / name)
        fsync_tree(self.work)
        previous = self.work  # after the exchange: the previous run's directory
        blocked = threading.current_thread() is threading.main_thread()
        if blocked:  # a stop signal now waits until the swap is whole
            signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
        try:
            if self.final.exists():
                if not _exchange(self.work, self.final):
                    previous = self.parent / f".{self.final.name}.old-{os.getpid()}"
                    os.replace(self.final, previous)
                    os.replace(self.work, self.final)
            else:
                os.replace(self.work, self.final)
            fsync_dir(self.parent)
            self.published = True
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
        shutil.rmtree(previous, ignore_errors=True)
        return self.final

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self.published:
                shutil.rmtree(self.work, ignore_errors=True)
        finally:
            self._restore_stop_handlers()
            self._release()
