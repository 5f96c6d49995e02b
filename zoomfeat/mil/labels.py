"""A task's labels table -> the cohort: ``slide_id, case_id, label (0/1), label_name``.

The labels CSV (TSV for ``.tsv``/``.txt``) has a slide column, a patient (case) column and a
label column (``task.slide_col``, ``task.case_col``, ``task.label_col``). The label becomes 0/1
in one of three ways:

* ``task.label_map``: value -> 0/1 (keys compared as strings, so YAML ``{IDC: 0, ILC: 1}`` and
  ``{0: 0, 1: 1}`` both work); rows with other values are left out with a warning;
* ``task.threshold``: a numeric column, ``value >= threshold`` -> 1;
* neither: the values must already be 0/1.

Rows without a label are left out with a :class:`~zoomfeat.mil.bagset.BenchWarning`; a missing
file or column, a slide listed with two labels, or nothing left is an
:class:`~zoomfeat.runtime.errors.InputError` naming the file. See ``docs/ARCHITECTURE.md``
(MIL benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.mil.bagset import preview, resolve_path, warn
from zoomfeat.runtime.errors import ConfigError, InputError


def _label_strings(values: pd.Series) -> pd.Series:
    """Label values as strings; integral floats (1.0 from a column with gaps) read as "1"."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        nonnull = values.dropna()
        if len(nonnull) and np.all(np.mod(nonnull.to_numpy(dtype=np.float64), 1) == 0):
            return values.map(lambda v: None if pd.isna(v) else str(int(v)))
    return values.map(lambda v: None if pd.isna(v) else str(v).strip())


def map_labels(
    values: pd.Series,
    label_map: Mapping[Any, int] | None = None,
    threshold: float | None = None,
    source: str = "labels",
    column: str = "label",
) -> tuple[pd.Series, pd.Series]:
    """(0/1 labels as a float Series with NaN where unusable, the label names as strings).

    ``threshold``: numeric values ``>= threshold`` -> 1. ``label_map``: value -> 0/1 (keys are
    compared as strings, so YAML ``{IDC: 0, ILC: 1}`` and ``{0: 0, 1: 1}`` both work). Neither:
    the values must already be 0/1.
    """
    if threshold is not None:
        numeric = pd.to_numeric(values, errors="coerce")
        bad = values[numeric.isna() & values.notna()]
        if len(bad):
            raise InputError(
                f"{source}: column {column!r} must be numeric for threshold={threshold}; got {preview(sorted(set(map(str, bad))), 5)}"
            )
        labels = (numeric >= float(threshold)).astype(np.float64).where(numeric.notna())
        names = labels.map(lambda v: None if pd.isna(v) else (f">={threshold:g}" if v else f"<{threshold:g}"))
        return labels, names
    names = _label_strings(values)
    if label_map:
        mapping = {str(k).strip(): int(v) for k, v in label_map.items()}
        if sorted(set(mapping.values())) != [0, 1]:
            raise ConfigError(f"task.label_map must map onto 0 and 1 (binary task), got {dict(label_map)}")
        labels = names.map(lambda v: np.nan if pd.isna(v) else mapping.get(v, np.nan)).astype(np.float64)
        unmapped = sorted({v for v in names.dropna() if v not in mapping})
        if unmapped:
            warn(
                f"{source}: {int(names.isin(unmapped).sum())} row(s) with {column!r} values not in label_map are left out: {preview(unmapped, 10)} (label_map: {mapping})"
            )
        return labels, names
    allowed = {"0", "1"}
    present = sorted(set(names.dropna()))
    if not set(present) <= allowed:
        raise InputError(
            f"{source}: column {column!r} holds {preview(present, 10)}; give task.label_map (value: 0/1) or task.threshold"
        )
    return names.map(lambda v: np.nan if pd.isna(v) else float(v)).astype(np.float64), names


def read_labels(
    path: str | Path,
    slide_col: str = "slide_id",
    case_col: str | None = "case_id",
    label_col: str = "label",
    label_map: Mapping[Any, int] | None = None,
    threshold: float | None = None,
) -> pd.DataFrame:
    """Read a task's labels CSV into a cohort table ``slide_id, case_id, label, label_name``.

    ``case_col=None``: each slide is its own patient. Rows with a missing or unmapped label
    are dropped with a warning; duplicated slides must agree on the label.
    """
    path = resolve_path(path)
    if not path.is_file():
        raise InputError(f"no labels file at {path} (task.labels=): check the path")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype={slide_col: str, **({case_col: str} if case_col else {})})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable labels CSV ({err}) (task.labels=)") from err
    wanted = [c for c in (slide_col, case_col, label_col) if c is not None]
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise InputError(
            f"{path}: no column(s) {missing} (columns: {list(table.columns)}); set task.slide_col / task.case_col / task.label_col"
        )
    labels, names = map_labels(table[label_col], label_map, threshold, str(path), label_col)
    cohort = pd.DataFrame(
        {
            "slide_id": table[slide_col].astype(str).str.strip(),
            "case_id": table[case_col].astype(str).str.strip()
            if case_col
            else table[slide_col].astype(str).str.strip(),
            "label": labels,
            "label_name": names,
        }
    )
    no_label = cohort["label"].isna() & cohort["label_name"].isna()
    if no_label.any():
        warn(
            f"{path}: {int(no_label.sum())} row(s) have no {label_col!r} value and are left out: {preview(cohort.loc[no_label, 'slide_id'])}"
        )
    cohort = cohort[cohort["label"].notna()]
    conflicts = cohort.groupby("slide_id")["label"].nunique()
    conflicts = conflicts[conflicts > 1].index.tolist()
    if conflicts:
        raise InputError(f"{path}: slide(s) listed with different labels: {preview(conflicts)}")
    cohort = cohort.drop_duplicates("slide_id").reset_index(drop=True)
    cohort["label"] = cohort["label"].astype(np.int64)
    if cohort.empty:
        raise InputError(
            f"{path}: no labelled slides left (check task.label_col, task.label_map, task.threshold)"
        )
    return cohort
