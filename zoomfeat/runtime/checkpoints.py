"""Training checkpoints on disk: atomic directories, a ``latest`` pointer, pruning, lookup.

Shared by the ZoomLDM trainer (``training/``) and the CDM trainer (``generation/``): the directory
logic knows nothing of the model. Layout under a run's ``out_dir``::

    checkpoints/step-00005000/             the model's own loadable files (ZoomLDM: a pretrained
                                           dir with the EMA UNet; the CDM: cdm_ema.safetensors) ...
    checkpoints/step-00005000/trainer/     ... plus the training state (live weights, optimizer,
                                           EMA shadows, RNG, state.json written last;
                                           :mod:`zoomfeat.runtime.train_state`)
    checkpoints/latest -> step-00005000    symlink (a text file holding the name where the
                                           file system has no symlinks)

Why a directory per step and a pointer: a checkpoint is several files that must agree (weights,
optimiser moments, RNG, step), and a reader must never see a mix of two steps. So a checkpoint is
written into a temporary directory (``checkpoints/.step-XXXXXXXX.tmp-{pid}``,
:func:`zoomfeat.runtime.atomic.atomic_dir`), fsync-ed and renamed into place when every file is on
disk; ``latest`` is replaced (atomically) only after that. A run killed at any moment therefore
leaves ``latest`` pointing at a complete checkpoint; the partial temporary directory is removed by
the next run (:func:`clean_partial`). Completeness is one fact: ``trainer/state.json``, written
last, parses.

Resume semantics (both trainers): ``resume`` auto -> :func:`find_latest` (``latest`` if complete
and undamaged, else the newest usable step); false -> refuse an ``out_dir`` that already holds
checkpoints (:func:`refuse_existing`); a path -> :func:`resolve_checkpoint`.

Damage (a disk that filled up, a copy cut short, a file system that lost data after a crash): the
atomic writes above protect against a killed writer, not against files damaged afterwards. So
resume verifies the checkpoint it picks (:func:`checkpoint_damage`): every JSON file parses,
every ``.safetensors`` file is exactly as long as its header says (``8 + header + max(data end)``
bytes, the length safetensors itself demands), every ``.pt`` file is a readable zip archive whose
members lie inside the file. That reads headers only (milliseconds, whatever the model size); a
bit flip inside the tensor data is not detected. A damaged newest checkpoint is passed over with a
warning naming it and the one used instead; when no checkpoint is usable, resume refuses in one
line (:class:`~zoomfeat.runtime.errors.WeightsError`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoomfeat.runtime.atomic import atomic_dir, fsync_dir, tmp_name
from zoomfeat.runtime.errors import OutputError, WeightsError, WeightsNotFoundError

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer/state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
#: what atomic_dir leaves when killed: the temporary directory, or a complete one swapped aside
_TMP_DIR = re.compile(r"^\.step-\d+\.tmp-\d+$")
_OLD_DIR = re.compile(r"^\.(step-\d+)\.old-\d+$")


def step_dir_name(step: int) -> str:
    """``step-XXXXXXXX`` (eight digits: names sort by step)."""
    return f"step-{int(step):08d}"


def checkpoint_root(out_dir: str | Path) -> Path:
    """``out_dir/checkpoints``."""
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
    """The checkpoint's ``trainer/state.json`` (WeightsNotFoundError when it is not complete)."""
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        raise WeightsNotFoundError(f"{ckpt} is not a complete training checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())


def set_latest(root: Path, name: str) -> None:
    """Point ``root/latest`` at ``name`` atomically (symlink, else a text file)."""
    tmp = tmp_name(root / LATEST)
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(name, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        tmp.write_text(name + "\n")
    os.replace(tmp, root / LATEST)
    fsync_dir(root)


def latest_name(root: Path) -> str | None:
    """The step directory ``root/latest`` names (symlink or text file), or None."""
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


def _safetensors_damage(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be loaded, from its header alone (None: it can).

    The layout is ``n`` (8 bytes, little-endian) + ``n`` bytes of JSON header + the tensor data;
    the header gives every tensor's ``data_offsets`` into the data, and the file must end exactly
    where the last tensor does: ``size == 8 + n + max(end)``.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated ({size} bytes, shorter than its 8-byte header length)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"{path.name} is truncated ({size} bytes, its header alone needs {8 + n})"
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path.name} has an unreadable header"
    want = 8 + n + max(ends, default=0)
    if size != want:
        return f"{path.name} is {'truncated' if size < want else 'too long'} ({size} bytes, its header describes {want})"
    return None


def _zip_damage(path: Path) -> str | None:
    """Why a ``.pt`` file (torch.save's zip archive) cannot be read (None: it can): its central
    directory (at the end: lost by any truncation) must read and every member must lie inside it."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"{path.name} is truncated (member {info.filename} ends past {size} bytes)"
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return f"{path.name} is not a readable archive ({size} bytes: {err})"
    return None


def checkpoint_damage(ckpt: str | Path) -> str | None:
    """Why the checkpoint ``ckpt`` cannot be resumed from or loaded, in a few words (None: usable).

    Checks (headers only, see the module docstring): ``trainer/state.json`` present, every
    ``*.json`` parses, every ``*.safetensors`` has its full length, every ``*.pt`` is a complete
    zip archive.
    """
    ckpt = Path(ckpt)
    if not is_complete(ckpt):
        return f"no readable {STATE_FILE}"
    for path in sorted(ckpt.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(ckpt)
        try:
            if path.suffix == ".safetensors":
                why = _safetensors_damage(path)
            elif path.suffix == ".pt":
                why = _zip_damage(path)
            elif path.suffix == ".json":
                try:
                    json.loads(path.read_text())
                    why = None
                except (ValueError, UnicodeDecodeError):
                    why = f"{path.name} is not valid JSON"
            else:
                continue
        except OSError as err:
            why = f"{path.name} cannot be read ({err.strerror or err})"
        if why is not None:
            return why if rel.parent == Path(".") else f"{rel.parent}/{why}"
    return None


def find_latest(out_dir_or_root: str | Path) -> Path | None:
    """The checkpoint to resume from: ``latest`` if complete and undamaged, else the newest usable one.

    Returns None when there is no complete checkpoint at all (a fresh run). A damaged checkpoint
    passed over gives a warning naming it and the one used; when every complete checkpoint is
    damaged, :class:`~zoomfeat.runtime.errors.WeightsError` (one line naming each and what to do).
    """
    root = Path(out_dir_or_root)
    if (root / CHECKPOINTS_DIR).is_dir():
        root = root / CHECKPOINTS_DIR
    name = latest_name(root)
    found = [p for _, p in reversed(list_checkpoints(root))]  # newest first
    pointer_ok = name is not None and is_complete(root / name)
    if name is not None and pointer_ok:  # latest first (it is normally the newest too)
        target = root / name
        found = [target] + [p for p in found if p.name != target.name]
    damaged: list[tuple[Path, str]] = []
    chosen = None
    for p in found:
        why = checkpoint_damage(p)
        if why is None:
            chosen = p
            break
        damaged.append((p, why))
    if damaged and chosen is None:
        listed = "; ".join(f"{p.name}: {why}" for p, why in damaged)
        raise WeightsError(
            f"no usable training checkpoint in {root} ({listed}); move the damaged step directories "
            "out of it to start afresh, or pass resume=PATH to a good copy"
        )
    if chosen is None:
        return None
    if damaged:
        newest, why = damaged[0]
        warnings.warn(
            f"checkpoint {newest} is damaged ({why}); using {chosen.name}, the newest usable one "
            f"(the damaged directory is left as it is{'' if len(damaged) == 1 else f', as are {len(damaged) - 1} more'})",
            stacklevel=2,
        )
    elif name and not pointer_ok:
        warnings.warn(
            f"{root / LATEST} points at {name!r}, which is not a complete checkpoint; using {chosen.name}",
            stacklevel=2,
        )
    return chosen


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run dir, a ``checkpoints`` dir, ``latest`` or a step dir.

    A step directory named explicitly is verified and refused in one line when damaged
    (:func:`checkpoint_damage`); a run or ``checkpoints`` directory gets :func:`find_latest`'s
    fallback to the newest usable checkpoint.
    """
    p = Path(path)
    if is_complete(p):
        p = p.resolve() if p.is_symlink() else p
        why = checkpoint_damage(p)
        if why is not None:
            raise WeightsError(
                f"training checkpoint {p} is damaged ({why}); pass an earlier step directory or the run directory"
            )
        return p
    found = find_latest(p)
    if found is None:
        raise WeightsNotFoundError(
            f"no complete training checkpoint at {p} (looked for {STATE_FILE}, {CHECKPOINTS_DIR}/{LATEST})"
        )
    return found


def clean_partial(root: Path) -> list[Path]:
    """Remove temporary checkpoint directories left by a killed run; returns what was removed.

    A complete checkpoint swapped aside by a run killed before its replacement landed (a
    same-step rewrite) is put back instead.
    """
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            m = _OLD_DIR.match(p.name)
            if m and p.is_dir() and not (root / m.group(1)).exists() and is_complete(p):
                os.replace(p, root / m.group(1))
                continue
            if (_TMP_DIR.match(p.name) or m) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            elif p.name.startswith(f".{LATEST}.tmp-"):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def write_checkpoint(
    root: str | Path, step: int, write: Callable[[Path], None], keep: int | None = None
) -> Path:
    """Write a checkpoint atomically and durably.

    Args:
        root: the ``checkpoints`` directory.
        step: the optimiser step (names the directory ``step-XXXXXXXX``).
        write: fills a temporary directory; must write ``trainer/state.json`` last.
        keep: afterwards delete all but the newest ``keep`` checkpoints (never ``latest``).

    Returns:
        The checkpoint directory; ``latest`` points at it.
    """
    root = Path(root)
    name = step_dir_name(step)
    final = root / name
    with atomic_dir(final) as tmp:  # re-writing the same step (after a resume) replaces it
        write(tmp)
        if not is_complete(tmp):
            raise RuntimeError(f"checkpoint writer did not produce {STATE_FILE} in {tmp}")
    set_latest(root, name)
    if keep is not None and keep > 0:
        current = latest_name(root)
        for _, p in list_checkpoints(root)[:-keep]:
            if p.name != current:
                shutil.rmtree(p, ignore_errors=True)
    return final


def resume_source(out_dir: str | Path, resume: object) -> Path | None:
    """The checkpoint a run with this ``resume`` setting continues from (None: start afresh).

    Args:
        out_dir: the run directory (its ``checkpoints`` is searched).
        resume: ``auto``/``latest``/True: the newest complete checkpoint, if any; False/``never``:
            none, and an ``out_dir`` that already holds checkpoints is refused (OutputError);
            anything else: a checkpoint path (:func:`resolve_checkpoint`).
    """
    root = checkpoint_root(out_dir)
    if resume in (False, None, "false", "False", "no", "never"):
        refuse_existing(out_dir)
        return None
    if resume in (True, "auto", "true", "True", "latest"):
        return find_latest(root)
    return resolve_checkpoint(str(resume))


def refuse_existing(out_dir: str | Path) -> None:
    """OutputError when ``out_dir`` already holds checkpoints (a run that must not resume)."""
    if list_checkpoints(checkpoint_root(out_dir)):
        raise OutputError(
            f"{out_dir} already holds training checkpoints and resume=false; "
            "use resume=auto to continue, or another out_dir"
        )
