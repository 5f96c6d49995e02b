"""What the tests of stopped runs share: the process tree of a run, read from /proc (the signal
tests of extraction, prepare, train, the CDM trainer, generate and the bench), and the extraction
side of tests/test_signals.py and tests/test_disk_full.py (a directory of synthetic slides, the
bags and temporaries a run left under its out_dir)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np


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


def interrupt(proc: subprocess.Popen, signum: int, *, timeout: float = 120) -> str:
    """Send ``signum`` as a user would (SIGINT to the whole process group, as a terminal's Ctrl-C
    does, so ``proc`` must run in its own session; any other signal to the main process, as
    ``kill`` does) and return its stderr once it has exited."""
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    return proc.communicate(timeout=timeout)[1]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and everything under it (a test's ``finally``: nothing outlives a failed test)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait(timeout=30)


def left_alive(pids: list[int], *, within_s: float = 5.0) -> list[int]:
    """The pids still alive ``within_s`` seconds after the main process exited: a process that
    is ending (the multiprocessing resource tracker notices its parent's exit on its own) gets
    that long; the leftovers the signal handling removes were still alive seconds later and would stay."""
    deadline = time.monotonic() + within_s
    while (running := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


def slides_dir(
    make_slide: Callable[..., Path], root: Path, *, prefix: str, seed: int, count: int = 3
) -> Path:
    """``root`` holding ``count`` 1024 x 1024 px synthetic slides ``{prefix}0.svs ...`` (half
    tissue, 2 levels, seeds ``seed, seed + 1, ...``), as symlinks to ``make_slide``'s (the
    ``synthetic_slide_factory`` fixture's) cached files."""
    for k in range(count):
        p = make_slide(
            f"{prefix}{k}", width=1024, height=1024, mpp=0.5, levels=2, seed=seed + k, tissue_fraction=0.5
        )
        (root / p.name).symlink_to(p)
    return root


def read_bags(out: Path) -> dict[str, np.ndarray]:
    """Every feature bag's features and coords under an extraction's ``out``, by relative path
    (``20x_256px_0px_overlap/features_x/slide.h5:features``)."""
    got = {}
    for p in sorted(out.rglob("*.h5")):
        if "features_" in p.parent.name:
            with h5py.File(p, "r") as f:
                got[f"{p.relative_to(out)}:features"] = f["features"][()]
                got[f"{p.relative_to(out)}:coords"] = f["coords"][()]
    return got


def temporaries(out: Path) -> list[Path]:
    """The temporary files (``.name.tmp-...``) a run left under ``out``."""
    return [p for p in out.rglob(".*") if ".tmp-" in p.name] if out.is_dir() else []
