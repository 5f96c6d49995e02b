"""Stopping cleanly on SIGTERM, SIGINT (Ctrl-C) and SIGUSR1: a flag, not an exception mid-write.

A long run is ended from outside: SLURM sends SIGTERM at its time limit or on preemption (and
SIGKILL ``KillWait`` seconds later, 30 by default), Ctrl-C sends SIGINT, and ``sbatch
--signal=USR1@120`` sends SIGUSR1 two minutes before the limit. Python's defaults are wrong for a
run that writes files: SIGTERM kills at once (temporaries stay, no word said), SIGINT raises
KeyboardInterrupt wherever the program happens to be (a 100-line traceback).

:func:`stop_on_signals` installs handlers that only record the signal; the workflow polls
:func:`requested` between units of work (a training step, a slide), finishes or abandons the unit
in hand, cleans up, and raises :class:`StopRequested` with one sentence saying what was finished
and how to resume. The entry points (:func:`run_stoppable`) print it as one line,
``zoomfeat train: stopped by SIGTERM: ...``, and exit with ``128 + signal number`` (130 for
SIGINT, 143 for SIGTERM, 138 for SIGUSR1), the shell's convention for a signalled program.

A second signal while the first is being honoured raises :class:`StopRequested` at once from the
handler (an impatient Ctrl-C stops without waiting for the unit; atomic writes keep finished files
intact either way). On leaving the context the previous handlers are restored. Handlers can only be
installed from the main thread; elsewhere the context does nothing (:func:`requested` stays None).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

T = TypeVar("T")

#: the signals a long run stops on: Ctrl-C, the scheduler's end, the scheduler's early warning
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

_received: list[int] = []  # signals received inside the innermost active context


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """The run stopped on a signal; ``message`` says what was finished and how to resume.

    ``exit_code`` is ``128 + signum`` (130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1).
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.message = message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15 (the number as text when unknown)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def requested() -> int | None:
    """The first stop signal received inside the active :func:`stop_on_signals` (None: none)."""
    return _received[0] if _received else None


def request(signum: int = signal.SIGTERM) -> None:
    """Record a stop request as if ``signum`` had arrived (a workflow stopping its own run, e.g.
    on a full disk, or a launcher forwarding a signal it caught)."""
    _received.append(int(signum))


def check(message: str) -> None:
    """Raise :class:`StopRequested` with ``message`` when a stop was requested, else nothing."""
    signum = requested()
    if signum is not None:
        raise StopRequested(signum, message)


@contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, ``signals`` only record a stop request (:func:`requested`); a second one
    raises :class:`StopRequested` from the handler. Previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        first = not _received
        _received.append(signum)
        if not first:
            raise StopRequested(
                signum,
                f"a second signal ({signal_name(signum)}) stopped the run at once; finished outputs are kept, "
                "rerun the same command to continue",
            )

    previous = {s: signal.signal(s, handler) for s in signals}
    saved = list(_received)
    _received.clear()
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received[:] = saved


def run_stoppable(entry: str, task: Callable[[], T]) -> T:
    """``task()`` under :func:`stop_on_signals`; a :class:`StopRequested` becomes one line on stderr,
    ``zoomfeat {entry}: stopped by SIGTERM: {message}``, and ``SystemExit(128 + signum)``."""
    with stop_on_signals():
        try:
            return task()
        except StopRequested as stop:
            print(
                f"zoomfeat {entry}: stopped by {stop.signal_name}: {stop.message}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(stop.exit_code) from None


def ignore_stop_signals(*_: object) -> None:
    """Make this process ignore the stop signals: for worker processes (a DataLoader's
    ``worker_init_fn``, a pool initializer), which a scheduler's SIGTERM or a terminal's Ctrl-C
    reach together with their parent. The parent stops them itself when it stops (and they exit
    when it dies), so a signal never kills a worker under a parent that is still finishing its
    unit (PyTorch's loader would raise "worker killed by signal" there)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
