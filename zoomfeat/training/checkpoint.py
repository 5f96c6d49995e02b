"""Training checkpoints on disk: atomic directories, a ``latest`` pointer, pruning, lookup.

Layout under a run's ``out_dir``::

    checkpoints/step-00005000/             a ZoomLDM pretrained dir (EMA UNet weights) ...
    checkpoints/step-00005000/trainer/     ... plus the training state (live UNet, optimizer,
                                           EMA bookkeeping, RNG, state.json written last)
    checkpoints/step-00005000/samples/     sample grid PNG per magnification
    checkpoints/latest -> step-00005000    symlink (a text file holding the name where the
                                           file system has no symlinks)

A checkpoint is written into ``checkpoints/.tmp-step-*`` and renamed into place when every file
is on disk; ``latest`` is replaced (atomically) only after that. A run killed at any moment
therefore leaves ``latest`` pointing at a complete checkpoint; the partial temporary directory is
removed by the next run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer/state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{int(step):08d}"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR


def is_complete(ckpt: str | Path) -> bool:
    """A finished training checkpoint: its ``trainer/state.json`` (written last) is readable."""
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        return False
    try:
        json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def read_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete training checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
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


def set_latest(root: Path, name: str) -> None:
    """Point ``root/latest`` at ``name`` atomically (symlink, else a text file)."""
    tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(name, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        tmp.write_text(name + "\n")
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)


def latest_name(root: Path) -> str | None:
    p = root / LATEST
    if p.is_symlink():
        return os.readlink(p).rstrip("/").split("/")[-1]
    if p.is_file():
        return p.read_text().strip() or None
    return None


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete ``step-*`` checkpoints under ``root``, by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and is_complete(p):
            out.append((int(m.group(1)), p))
    return sorted(out)


def find_latest(out_dir_or_root: str | Path) -> Path | None:
    """The checkpoint to resume from: ``latest`` if complete, else the newest complete one."""
    root = Path(out_dir_or_root)
    if (root / CHECKPOINTS_DIR).is_dir():
        root = root / CHECKPOINTS_DIR
    name = latest_name(root)
    if name and is_complete(root / name):
        return root / name
    found = list_checkpoints(root)
    if name and found:
        warnings.warn(
            f"{root / LATEST} points at {name!r}, which is not a complete checkpoint; using {found[-1][1].name}",
            stacklevel=2,
        )
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run dir, a ``checkpoints`` dir, ``latest`` or a step dir."""
    p = Path(path)
    if is_complete(p):
        return p.resolve() if p.is_symlink() else p
    found = find_latest(p)
    if found is None:
        raise FileNotFoundError(
            f"no complete training checkpoint at {p} (looked for {STATE_FILE}, {CHECKPOINTS_DIR}/{LATEST})"
        )
    return found


def clean_partial(root: Path) -> list[Path]:
    """Remove temporary checkpoint directories left by a killed run; returns what was removed."""
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            # a complete checkpoint swapped out by a run killed before its replacement landed
            m = re.match(r"^\.old-(step-\d+)-\d+$", p.name)
            if m and p.is_dir() and not (root / m.group(1)).exists() and is_complete(p):
                os.replace(p, root / m.group(1))
                continue
            if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            elif p.name.startswith(f".{LATEST}.tmp-"):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def write_checkpoint(
    root: str | Path, step: int, write: Callable[[Path], None], keep: int | None = None
) -> Path:
    """Write a checkpoint atomically: ``write(tmp_dir)`` fills a temporary directory (and must
    write ``trainer/state.json`` last), which is then renamed to ``step-XXXXXXXX``; ``latest`` is
    updated after the rename; then all but the newest ``keep`` checkpoints are deleted (never
    ``latest``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        if not is_complete(tmp):
            raise RuntimeError(f"checkpoint writer did not produce {STATE_FILE} in {tmp}")
        _fsync_tree(tmp)
        final = root / name
        old = None
        if final.exists():  # re-writing the same step (e.g. after a resume): swap it out
            old = root / f".old-{name}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        set_latest(root, name)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None and keep > 0:
        current = latest_name(root)
        for _, p in list_checkpoints(root)[:-keep]:
            if p.name != current:
                shutil.rmtree(p, ignore_errors=True)
    return final
