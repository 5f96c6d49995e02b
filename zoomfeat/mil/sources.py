"""Bag sources: where a feature set's bags are, which sets a directory holds, and which reader reads them.

Three layouts of ``task.bags`` (:func:`resolve_source`):

* a TRIDENT job directory (what ``zoomfeat.extract`` writes, or TRIDENT's own):
  ``{mag}x_{px}px_{overlap}px_overlap/features_{set}/{slide_id}.h5``, for any set name;
* a directory holding ``features_{set}/``, a ``features_{set}`` directory itself, or a path with
  ``{set}`` in it (formatted with the set's name);
* an instance CSV, one row per instance: bag label, bag id, then the features (the classic MIL
  sets in ``zoomfeat/data/mil/``).

``feature_sets`` may hold glob patterns (``uni_*``, ``*_20x``), expanded against the sets found
(:func:`expand_feature_sets`). A fused set ``{family}_fused`` whose directory is absent (extraction
with ``bags.fused=derived``) is found and read all the same when its ``_20x`` and ``_5x`` sets
are there: its rows are derived from them (:func:`zoomfeat.bags.derived_fused`); listings mark it
``(derived)``. :func:`load_feature_set` reads one set into a
:class:`~zoomfeat.mil.bagset.BagSet` through the reader of its kind: bag directories
:mod:`zoomfeat.mil.bagdir`, instance CSVs :mod:`zoomfeat.mil.instance_csv`. Whether every
labelled slide has a bag is :mod:`zoomfeat.mil.coverage`. A missing source or a pattern matching
nothing is a :class:`~zoomfeat.runtime.errors.BagError` naming what was looked for and the sets
found. See ``docs/ARCHITECTURE.md`` (MIL benchmark).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from zoomfeat.bags import (
    FUSED_SUFFIX,
    bag_path,
    fused_part_dirs,
    is_bag_dir,
    is_derived_set_dir,
    set_magnification,
)
from zoomfeat.mil.bagdir import load_bag_dir
from zoomfeat.mil.bagset import BagSet, resolve_path
from zoomfeat.mil.instance_csv import load_instance_csv
from zoomfeat.runtime.errors import BagError, InputError

log = logging.getLogger(__name__)


def resolve_source(bags: str | Path, feature_set: str) -> Path:
    """Where ``feature_set``'s bags are.

    ``bags`` may contain ``{set}`` (formatted with the feature set); be an instance CSV; be a
    ``features_{set}`` directory itself; hold ``features_{set}/``; or be a TRIDENT job directory
    (``zoomfeat.extract``'s output, or TRIDENT's own) holding
    ``{mag}x_{px}px_{overlap}px_overlap/features_{set}/`` for any set name. A fused set's
    directory may be absent when its ``_20x`` and ``_5x`` directories exist: its path is returned
    all the same, and its bags are derived (:func:`zoomfeat.bags.is_derived_set_dir`).

    Args:
        bags: ``task.bags``.
        feature_set: the set's name.

    Returns:
        The ``features_{set}`` directory or the instance CSV.

    Raises:
        BagError: nothing there, or the set in several TRIDENT directories (names them).
    """
    text = str(bags)
    if "{set}" in text:
        path = resolve_path(text.replace("{set}", feature_set))
        if not (path.exists() or is_derived_set_dir(path)):
            raise BagError(f"no bags for feature set {feature_set!r} at {path} (task.bags={text})")
        return path
    root = resolve_path(text)
    if root.is_file():
        return root
    tried = [root / f"features_{feature_set}"]
    if set_magnification(feature_set) is not None:  # {family}_20x|_5x|_fused: its extraction directory
        tried.append(bag_path(root, feature_set, "x").parent)
    for candidate in tried:
        if is_bag_dir(candidate):
            return candidate
    if root.is_dir() and root.name == f"features_{feature_set}":
        return root
    if not root.exists():
        raise BagError(f"no bag source at {root} (task.bags=): check the path")
    found = [d for d in _mag_dirs(root) if is_bag_dir(d / f"features_{feature_set}")]
    if len(found) == 1:
        return found[0] / f"features_{feature_set}"
    if len(found) > 1:
        raise BagError(
            f"feature set {feature_set!r} is in {len(found)} TRIDENT directories under {root} "
            f"({', '.join(d.name for d in found)}); point task.bags at the one to use (e.g. task.bags={found[0]})"
        )
    raise BagError(
        f"no bags for feature set {feature_set!r} under {root}; looked for features_{feature_set}/ there and in "
        f"{{mag}}x_{{px}}px_{{overlap}}px_overlap/ directories; feature sets found: {marked_sets(root) or 'none'}"
    )


#: TRIDENT's job-directory names: ``{mag}x_{px}px_{overlap}px_overlap``
TRIDENT_DIR = re.compile(r"^\d+(\.\d+)?x_\d+px_\d+px_overlap$")


def _mag_dirs(root: Path) -> list[Path]:
    """TRIDENT-layout directories ``{mag}x_{px}px_{overlap}px_overlap`` directly under ``root``."""
    return sorted(d for d in root.iterdir() if d.is_dir() and TRIDENT_DIR.match(d.name))


def available_sets(bags: str | Path) -> list[str]:
    """Feature-set names under a bag root: ``features_*/`` in it and in its TRIDENT directories
    (any name: ``features_conch_v15`` from TRIDENT as well as zoomfeat's own), and the fused sets
    that can be derived (:func:`derived_sets`).

    Args:
        bags: a bag root, a TRIDENT directory or a ``features_{set}`` directory.

    Returns:
        The set names, sorted (empty when ``bags`` is not a directory).
    """
    root = resolve_path(str(bags))
    if is_derived_set_dir(root):
        return [root.name[len("features_") :]]
    if not root.is_dir():
        return []
    if root.name.startswith("features_"):
        return [root.name[len("features_") :]]
    names = []
    for d in [root, *_mag_dirs(root)]:
        names += [
            p.name[len("features_") :] for p in d.iterdir() if p.is_dir() and p.name.startswith("features_")
        ]
    return sorted(set(names) | set(derived_sets(root)))


def derived_sets(bags: str | Path) -> list[str]:
    """The fused sets under a bag root that have no directory but whose ``{family}_20x`` and
    ``{family}_5x`` directories exist (extraction with ``bags.fused=derived``): readers derive
    their rows (:func:`zoomfeat.bags.derived_fused`).

    Args:
        bags: a bag root or a TRIDENT directory.

    Returns:
        The set names, sorted.
    """
    root = resolve_path(str(bags))
    if not root.is_dir():
        return []
    names = set()
    for d in [root, *_mag_dirs(root)]:
        for p in d.iterdir():
            if p.is_dir() and p.name.startswith("features_") and p.name.endswith("_20x"):
                fused = d / f"{p.name.removesuffix('_20x')}{FUSED_SUFFIX}"
                if fused_part_dirs(fused) is not None and is_derived_set_dir(fused):
                    names.add(fused.name[len("features_") :])
    return sorted(names)


def marked_sets(bags: str | Path) -> list[str]:
    """:func:`available_sets` for messages, derived fused sets marked: ``['uni_20x', 'uni_5x', 'uni_fused (derived)']``."""
    derived = set(derived_sets(bags))
    return [f"{n} (derived)" if n in derived else n for n in available_sets(bags)]


def expand_feature_sets(patterns: list[str], bags: str | Path | None) -> list[str]:
    """``feature_sets`` with glob patterns (``uni_*``, ``*_20x``) expanded against the sets under
    ``task.bags`` (:func:`available_sets`), in the order given, each set once.

    A pattern matching nothing is a :class:`BagError` listing the sets found; plain names are kept
    (their source is checked by :func:`resolve_source`), as is everything for a ``{set}`` path or a file.

    Args:
        patterns: ``feature_sets``: names and globs.
        bags: ``task.bags``.

    Returns:
        The set names.
    """
    if bags is None or "{set}" in str(bags) or resolve_path(str(bags)).is_file():
        return list(patterns)
    have = None
    out: list[str] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            names = [pattern]
        else:
            have = available_sets(bags) if have is None else have
            names = [n for n in have if fnmatch.fnmatchcase(n, pattern)]
            if not names:
                raise BagError(
                    f"feature_sets pattern {pattern!r} matches no feature set under {bags} (found: {marked_sets(bags) or 'none'})"
                )
        out += [n for n in names if n not in out]
    return out


def is_instance_csv(source: Path) -> bool:
    """Whether ``source`` is an instance CSV (a file) rather than a bag directory."""
    return source.is_file() and source.suffix.lower() in (".csv", ".tsv", ".txt", ".gz")


def load_feature_set(
    source: Path,
    feature_set: str,
    *,
    cohort: pd.DataFrame | None,
    in_memory: bool | str = "auto",
    dtype: str = "float16",
    memory_fraction: float = 0.5,
    csv_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> BagSet:
    """Load one feature set from a bag directory or an instance CSV.

    Args:
        source: :func:`resolve_source`'s answer.
        feature_set: the set's name.
        cohort: slide_id, case_id, label (None: only for an instance CSV, whose labels are then used).
        in_memory, dtype, memory_fraction, progress: as :func:`zoomfeat.mil.bagdir.load_bag_dir`.
        csv_options: ``task.csv`` + ``label_map`` (+ ``auto_classes``) for an instance CSV.

    Returns:
        The set's :class:`~zoomfeat.mil.bagset.BagSet`, in the cohort's order.
    """
    if is_instance_csv(source):
        return load_instance_csv(source, feature_set, cohort=cohort, dtype=dtype, **dict(csv_options or {}))
    if cohort is None:
        raise InputError(f"{source} is a bag directory: the task needs a labels CSV (task.labels=)")
    parts = fused_part_dirs(source)
    if parts is not None and is_derived_set_dir(source):
        log.info("%s: no fused files; its rows are derived from %s and %s", feature_set, parts.x20, parts.x5)
    return load_bag_dir(
        source,
        cohort,
        feature_set=feature_set,
        in_memory=in_memory,
        dtype=dtype,
        memory_fraction=memory_fraction,
        progress=progress,
    )
