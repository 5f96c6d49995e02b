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

Every entry point runs its task through ``zoomfeat.cli.report_errors``, which installs the handlers
with ``at_once=True`` (the first signal raises :class:`StopRequested` where the program is, as
Python's own Ctrl-C does, for work that polls nothing: reading a config, loading weights) and prints
any :class:`StopRequested` as the one line (:func:`stop_line`). A workflow that polls (extraction,
``prepare``, ``train``, ``generate``) opens its own :func:`stop_on_signals` (flag mode) inside; one
that must end at once on its own terms (the bench's staged output directory) installs its own
handlers and ends with :func:`exit_at_once`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn, TypeVar

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


#: what a stop raised from the handler says (a second signal, or the first with ``at_once``)
AT_ONCE = "finished outputs are kept (every file is written whole or not at all); rerun the same command to continue"


@contextmanager
def stop_on_signals(
    signals: tuple[signal.Signals, ...] = STOP_SIGNALS, *, at_once: bool = False
) -> Iterator[None]:
    """Within the block, ``signals`` only record a stop request (:func:`requested`); a second one
    raises :class:`StopRequested` from the handler. With ``at_once`` the first one raises it too
    (for work that polls nothing). Previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        first = not _received
        _received.append(signum)
        if at_once:
            raise StopRequested(signum, f"stopped at once; {AT_ONCE}")
        if not first:
            raise StopRequested(
                signum, f"a second signal ({signal_name(signum)}) stopped the run at once; {AT_ONCE}"
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


def stop_line(entry: str, stop: StopRequested) -> str:
    """The one line of a stopped run: ``zoomfeat {entry}: stopped by SIGTERM: {message}``."""
    return f"zoomfeat {entry}: stopped by {stop.signal_name}: {stop.message}"


def run_stoppable(entry: str, task: Callable[[], T]) -> T:
    """``task()`` under :func:`stop_on_signals` (flag mode: the task polls :func:`requested`, or a
    step hook of :func:`step_check` does); a :class:`StopRequested` becomes the one line on stderr
    (:func:`stop_line`) and ``SystemExit(128 + signum)``."""
    with stop_on_signals():
        try:
            return task()
        except StopRequested as stop:
            print(stop_line(entry, stop), file=sys.stderr, flush=True)
            raise SystemExit(stop.exit_code) from None


def step_check(message: Callable[[str], str]) -> Callable[..., None]:
    """A step hook (``callback(step, t, state)``, :mod:`zoomfeat.model.callbacks`) that raises
    :class:`StopRequested` with ``message(where)`` when a stop was requested, ``where`` naming the
    step just finished (``"after joint step 3"``, ``"after constraint step 0 (step=3,
    first_tile=16)"`` with the state's enclosing loops; ``"before sampling"`` when called without
    arguments): a sampler handed it stops at the end of its current step, and the algorithm itself
    knows nothing of signals."""

    def on_step(step: int | None = None, t: int | None = None, state: object = None) -> None:
        if requested() is not None:
            stage = getattr(state, "stage", None)
            outer = dict(getattr(state, "outer", None) or {})
            within = f" ({', '.join(f'{k}={v}' for k, v in outer.items())})" if outer else ""
            where = "before sampling" if step is None else f"after {stage or 'sampler'} step {step}{within}"
            check(message(where))

    return on_step


def exit_at_once(entry: str, signum: int, message: str) -> NoReturn:
    """From a signal handler: write the one line (:func:`stop_line`) with a plain ``write(2)`` and
    end the process with ``128 + signum`` without unwinding (the caller has removed what it must;
    the kernel closes files and releases locks). For work that keeps nothing of an unfinished run."""
    line = stop_line(entry, StopRequested(signum, message))
    os.write(2, (line + "\n").encode())
    os._exit(128 + signum)


def ignore_stop_signals(*_: object) -> None:
    """Make this process ignore the stop signals: for worker processes (a DataLoader's
    ``worker_init_fn``, a pool initializer), which a scheduler's SIGTERM or a terminal's Ctrl-C
    reach together with their parent. The parent stops them itself when it stops (and they exit
    when it dies), so a signal never kills a worker under a parent that is still finishing its
    unit (PyTorch's loader would raise "worker killed by signal" there)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
