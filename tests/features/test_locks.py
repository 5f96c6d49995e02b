"""zoomfeat.features.locks: one process per slide, and locks die with their process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from zoomfeat.features.locks import SlideLock


def test_lock_is_exclusive_and_released(tmp_path):
    a, b = SlideLock(tmp_path, "s1"), SlideLock(tmp_path, "s1")
    assert a.acquire() and a.acquire()  # re-acquiring a held lock is a no-op
    assert not b.acquire()
    assert SlideLock(tmp_path, "s2").acquire()  # other slides are independent
    a.release()
    assert not a.path.exists()
    assert b.acquire()
    b.release()


def test_a_killed_holder_does_not_leave_a_stale_lock(tmp_path):
    code = (
        "import sys, time; from zoomfeat.features.locks import SlideLock; "
        f"l = SlideLock({str(tmp_path)!r}, 's1'); assert l.acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        assert not SlideLock(tmp_path, "s1").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / ".locks" / "s1.lock").exists()  # the file stays, the lock does not
    deadline = time.monotonic() + 5
    lock = SlideLock(tmp_path, "s1")
    while not lock.acquire():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lock.release()
