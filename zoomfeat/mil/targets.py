"""Regression and survival cohorts: a labels CSV's numeric target, or follow-up time and event.

:func:`read_targets` reads the labels CSV of a ``task.type=regression`` or ``survival`` task into
the cohort table the benchmark uses everywhere (``slide_id, case_id, label, label_name``) plus the
target columns:

* regression: ``target`` = ``task.label_col`` (numeric); ``label`` = its quantile bin (0..q-1),
  so the patient-level folds are stratified on the target's distribution;
* survival: ``time`` = ``task.time_col`` (> 0), ``event`` = ``task.event_col`` (0/1, also
  ``true``/``false``, ``dead``/``alive``, ``yes``/``no``); ``label`` = ``event``, so the folds
  are stratified on events.

Every problem is one :class:`~zoomfeat.runtime.errors.InputError` naming the file and the key,
before any training: a missing column, a non-numeric target, a time <= 0, an event that is not 0/1,
no events at all, a slide listed twice with different values. :func:`check_fold_events` refuses a
split in which a training or test part holds no event.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from zoomfeat.mil.bagset import preview, resolve_path, warn
from zoomfeat.mil.config import TaskSection
from zoomfeat.runtime.errors import InputError

EVENT_WORDS = {
    "1": 1,
    "0": 0,
    "true": 1,
    "false": 0,
    "dead": 1,
    "alive": 0,
    "yes": 1,
    "no": 0,
    "1.0": 1,
    "0.0": 0,
}


def _numeric(table: pd.DataFrame, col: str, key: str, path: Path) -> pd.Series:
    raw = table[col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw[values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")]
    if len(bad):
        raise InputError(
            f"{path}: column {col!r} ({key}) must be numeric, got {preview(sorted(set(map(str, bad))), 5)} "
            f"(slides {preview(table.loc[bad.index, '_slide'].tolist(), 5)})"
        )
    return values


def read_targets(path: str | Path, task: TaskSection) -> pd.DataFrame:
    """The cohort of a regression or survival task (module docstring).

    Args:
        path: the labels CSV (``task.labels``; TSV for ``.tsv``/``.txt``).
        task: the task section (``type``, ``slide_col``, ``case_col``, ``label_col``,
            ``time_col``, ``event_col``).

    Returns:
        ``slide_id, case_id, label, label_name`` and ``target`` (regression) or ``time, event``.

    Raises:
        InputError: one line naming the file and the key (module docstring).
    """
    path = resolve_path(path)
    if not path.is_file():
        raise InputError(f"no labels file at {path} (task.labels=): check the path")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    slide_col, case_col = task.slide_col, task.case_col
    try:
        table = pd.read_csv(path, sep=sep, dtype={slide_col: str, **({case_col: str} if case_col else {})})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable labels CSV ({err}) (task.labels=)") from err
    survival = task.type == "survival"
    keys = {"task.slide_col": slide_col}
    if case_col:
        keys["task.case_col"] = case_col
    if survival:
        keys.update({"task.time_col": str(task.time_col), "task.event_col": str(task.event_col)})
    else:
        keys["task.label_col"] = task.label_col
    missing = [f"{k}={c}" for k, c in keys.items() if c not in table.columns]
    if missing:
        raise InputError(f"{path}: no column(s) for {', '.join(missing)} (columns: {list(table.columns)})")
    table["_slide"] = table[slide_col].astype(str).str.strip()
    cohort = pd.DataFrame(
        {
            "slide_id": table["_slide"],
            "case_id": table[case_col].astype(str).str.strip() if case_col else table["_slide"],
        }
    )
    if survival:
        time = _numeric(table, str(task.time_col), "task.time_col", path)
        words = table[str(task.event_col)].map(lambda v: None if pd.isna(v) else str(v).strip().lower())
        bad_event = words[words.notna() & ~words.isin(list(EVENT_WORDS))]
        if len(bad_event):
            raise InputError(
                f"{path}: column {task.event_col!r} (task.event_col) must be 0/1 (1 = event, 0 = censored), "
                f"got {preview(sorted(set(bad_event)), 5)}"
            )
        event = words.map(lambda v: np.nan if v is None else EVENT_WORDS[v])
        bad_time = time.notna() & (time <= 0)
        if bad_time.any():
            raise InputError(
                f"{path}: column {task.time_col!r} (task.time_col) must be > 0, got "
                f"{preview(time[bad_time].tolist(), 5)} for slide(s) {preview(cohort.loc[bad_time, 'slide_id'].tolist(), 5)}"
            )
        cohort["time"], cohort["event"] = time.astype(np.float64), event
        keep = cohort["time"].notna() & cohort["event"].notna()
        value_cols = ["time", "event"]
    else:
        cohort["target"] = _numeric(table, task.label_col, "task.label_col", path).astype(np.float64)
        keep = cohort["target"].notna()
        value_cols = ["target"]
    if (~keep).any():
        warn(
            f"{path}: {int((~keep).sum())} row(s) without a value are left out: {preview(cohort.loc[~keep, 'slide_id'])}"
        )
    cohort = cohort[keep]
    conflicts = cohort.groupby("slide_id")[value_cols].nunique().max(axis=1)
    conflicts = conflicts[conflicts > 1].index.tolist()
    if conflicts:
        raise InputError(f"{path}: slide(s) listed with different values: {preview(conflicts)}")
    cohort = cohort.drop_duplicates("slide_id").reset_index(drop=True)
    if cohort.empty:
        raise InputError(
            f"{path}: no slide with a usable value left ({', '.join(f'{k}={c}' for k, c in keys.items())})"
        )
    if survival:
        cohort["event"] = cohort["event"].astype(np.int64)
        if int(cohort["event"].sum()) == 0:
            raise InputError(
                f"{path}: no events in column {task.event_col!r} (task.event_col): a Cox model needs some"
            )
        cohort["label"] = cohort["event"]
        cohort["label_name"] = cohort["event"].map({0: "censored", 1: "event"})
    else:
        cohort["label"] = quantile_bins(cohort["target"].to_numpy())
        cohort["label_name"] = cohort["label"].map(lambda q: f"q{q}")
    return cohort


def quantile_bins(values: np.ndarray, max_bins: int = 4, min_per_bin: int = 10) -> np.ndarray:
    """Quantile bin (0..q-1) of each value, ``q = min(max_bins, n // min_per_bin)`` (>= 1): the
    strata of a regression task's folds."""
    v = np.asarray(values, dtype=np.float64)
    q = max(1, min(max_bins, len(v) // min_per_bin))
    if q == 1:
        return np.zeros(len(v), dtype=np.int64)
    edges = np.quantile(v, np.linspace(0, 1, q + 1)[1:-1])
    return np.searchsorted(edges, v, side="right").astype(np.int64)


def target_array(cohort: pd.DataFrame, slide_ids: list[str], task_type: str) -> np.ndarray:
    """The targets of ``slide_ids`` in order: (n,) ``target`` (regression) or (n, 2) ``time, event``."""
    frame = cohort.set_index("slide_id").loc[list(slide_ids)]
    if task_type == "survival":
        return frame[["time", "event"]].to_numpy(dtype=np.float64)
    return frame["target"].to_numpy(dtype=np.float64)


def check_event_count(cohort: pd.DataFrame, folds: int, source: str, event_col: str) -> None:
    """Refuse a survival cohort with fewer patients with an event than folds (some test fold would
    hold none), in one line naming the labels file and ``task.event_col``."""
    n = int(cohort.loc[cohort["event"] == 1, "case_id"].nunique())
    if n < folds:
        raise InputError(
            f"{source}: only {n} patient(s) with an event in column {event_col!r} (task.event_col) for "
            f"{folds} folds: some test fold would have no event; use fewer folds (cv.folds=) or a cohort with more events"
        )


def check_fold_events(splits: pd.DataFrame, cohort: pd.DataFrame, source: str, event_col: str) -> None:
    """Refuse a survival split where a fold's training or test part holds no event (one line).

    Raises:
        InputError: naming the labels file, ``task.event_col`` and the fold.
    """
    events = dict(zip(cohort["slide_id"], cohort["event"]))
    for (repeat, fold), frame in splits.groupby(["repeat", "fold"]):
        for part in ("train", "test"):
            ids = frame.loc[frame["part"] == part, "slide_id"]
            if len(ids) and not any(events.get(s, 0) for s in ids):
                raise InputError(
                    f"{source}: repeat {repeat} fold {fold}: its {part} part ({len(ids)} slides) has no event "
                    f"in column {event_col!r} (task.event_col); use fewer folds (cv.folds=) or a cohort with more events"
                )
