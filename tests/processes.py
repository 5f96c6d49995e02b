"""What the tests of stopped runs share: the process tree of a run, read from /proc (the signal
tests of extraction, prepare, train, the CDM trainer, generate and the bench), and the extraction
side of tests/test_signals.py and tests/test_disk_full.py (a directory of synthetic slides, the
bags and temporaries a run left under its out_dir); ``run_entries``: many short entry-point
commands, each a process of its own, without importing torch once per command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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


#: the extraction of the stopped-run tests (tests/test_signals.py, tests/test_disk_full.py):
#: ``ExtractConfig.from_kwargs`` keywords, the command line's names
STOP_RUN = {"model": "tiny", "encoder": "tiny", "tissue.min_tissue": 0.5, "progress": False, "batch_size": 4,
            "num_workers": 0}  # fmt: skip


def command_line(settings: dict) -> list[str]:
    """``settings`` (e.g. :data:`STOP_RUN`) as command-line overrides (``progress=false``)."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()]


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


# Run by ``run_entries`` as ``python -c``: import the libraries once, then fork one child per
# command; each child is a new process that runs its entry point as ``python -m`` does.
_FORK_RUNNER = r"""
import atexit, json, os, runpy, sys, time

for name in sys.argv[1:]:
    __import__(name)
jobs = json.load(sys.stdin)
parallel = jobs.pop(0)


def start(job):
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    # the child: stdin, stdout and stderr of its own, argv and cwd as `python -m` would have
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        os.dup2(os.open(path, flags, 0o644), fd)
    os.chdir(job["cwd"])
    sys.path[0] = job["cwd"]
    sys.argv = [job["module"], *job["args"]]
    try:
        runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:  # what the interpreter makes of it at exit
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # without tearing down the thousands of modules of torch (a second and more)


running, done, todo = {}, {}, list(enumerate(jobs))
while todo or running:
    while todo and len(running) < parallel:
        k, job = todo.pop(0)
        running[start(job)] = (k, time.perf_counter())
    pid, status = os.wait()
    k, t0 = running.pop(pid)
    done[k] = [os.waitstatus_to_exitcode(status), time.perf_counter() - t0]
print(json.dumps([done[k] for k in range(len(jobs))]))
"""

#: what every entry point imports (torch, diffusers' UNet, scipy, Hydra: about 2 to 6 CPU-s a
#: process), imported once by ``run_entries``; no ``zoomfeat`` entry module itself
PRELOAD = (
    "torch",
    "diffusers",
    "diffusers.models.unets.unet_2d",
    "scipy.stats",
    "h5py",
    "hydra",
    "omegaconf",
)


def run_entries(
    commands: list[tuple[str, list[str]]],
    *,
    cwd: Path,
    env: dict[str, str],
    parallel: int = 2,
    timeout: float = 600,
) -> list[tuple[subprocess.CompletedProcess, float]]:
    """Run each ``(module, args)`` as ``python -m module args`` would, each in a process of its
    own (exit status, stdout, stderr, cwd ``cwd``, environment ``env``), ``parallel`` at a time;
    (the finished process, seconds) per command, in order.

    The processes are forked from one Python process that imported :data:`PRELOAD` once, so that
    a command whose work is a second spends a second, not the import of torch and diffusers. The
    entry module itself runs fresh in each (``runpy``, as ``-m``), exactly as a user's command."""
    logs = Path(tempfile.mkdtemp(prefix="zoomfeat-entries-"))
    jobs = [
        {"module": m, "args": list(a), "cwd": str(cwd), "stdout": str(logs / f"{k}.out"),
         "stderr": str(logs / f"{k}.err")}
        for k, (m, a) in enumerate(commands)
    ]  # fmt: skip
    runner = subprocess.Popen(
        [sys.executable, "-c", _FORK_RUNNER, *PRELOAD], cwd=cwd, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = runner.communicate(json.dumps([parallel, *jobs]), timeout=timeout)
    except BaseException:
        kill_tree(runner)  # and the commands it runs
        raise
    assert runner.returncode == 0, err[-3000:]
    finished = []
    for job, (status, seconds) in zip(jobs, json.loads(out), strict=True):
        argv = [sys.executable, "-m", job["module"], *job["args"]]
        texts = [Path(job[k]).read_text(errors="replace") for k in ("stdout", "stderr")]
        finished.append((subprocess.CompletedProcess(argv, status, *texts), seconds))
    shutil.rmtree(logs)
    return finished
