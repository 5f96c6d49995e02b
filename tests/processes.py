"""The process tree of a run under test, read from /proc (the signal tests of extraction, prepare,
train and the CDM trainer share it)."""

from __future__ import annotations

import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Process ids under ``pid``, children first."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, already ended, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def left_alive(pids: list[int], *, within_s: float = 5.0) -> list[int]:
    """The pids still alive ``within_s`` seconds after the main process exited: a process that
    is ending (the multiprocessing resource tracker notices its parent's exit on its own) gets
    that long; the leftovers the signal handling removes were still alive seconds later and would stay."""
    deadline = time.monotonic() + within_s
    while (running := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running
