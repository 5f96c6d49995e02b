"""A task's labels table -> the cohort: ``slide_id, case_id, label (class index), label_name``.

The labels CSV (TSV for ``.tsv``/``.txt``) has a slide column, a patient (case) column and a
label column (``task.slide_col``, ``task.case_col``, ``task.label_col``). The label becomes a
class index 0..k-1 (k = 2 for a binary task) in one of four ways:

* ``task.label_map``: value -> class index (keys compared as strings, so YAML ``{IDC: 0, ILC: 1}``
  and ``{0: 0, 1: 1}`` both work); rows with other values are left out with a warning;
* ``task.threshold``: a numeric column, ``value >= threshold`` -> 1;
* ``task.auto_classes`` (``task=custom``): the distinct values numbered in sorted order;
* none: the values must already be 0/1 (or 0..k-1).

Rows without a label are left out with a :class:`~zoomfeat.mil.bagset.BenchWarning`; a missing
file or column, a slide listed with two labels, or nothing left is an
:class:`~zoomfeat.runtime.errors.InputError` naming the file. Ids are read as text without
surrounding spaces. The file is read and checked by :func:`zoomfeat.bags.read_labels_table`,
:func:`~zoomfeat.bags.labelled_rows` and :func:`~zoomfeat.bags.one_label_per_slide`, which
:class:`zoomfeat.BagDataset` uses too, so both accept and refuse the same files. See ``docs/ARCHITECTURE.md``
(MIL benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.bags import labelled_rows, one_label_per_slide, read_labels_table
from zoomfeat.mil.bagset import preview, resolve_path, warn
from zoomfeat.runtime.errors import ConfigError, InputError

#: what a labels CSV without the expected columns is told to set
COLUMN_KEYS = "set task.slide_col / task.case_col / task.label_col"


def _label_strings(values: pd.Series) -> pd.Series:
    """Label values as strings; integral floats (1.0 from a column with gaps) read as "1"."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        nonnull = values.dropna()
        if len(nonnull) and np.all(np.mod(nonnull.to_numpy(dtype=np.float64), 1) == 0):
            return values.map(lambda v: None if pd.isna(v) else str(int(v)))
    return values.map(lambda v: None if pd.isna(v) else str(v).strip())


def class_names(cohort: pd.DataFrame) -> list[str]:
    """Name of each class index ``0..k-1``: the label values mapped to it (``IDC``; ``a/b`` when
    several map to one class), or the index itself."""
    k = int(cohort["label"].max()) + 1 if len(cohort) else 0
    if "label_name" not in cohort:
        return [str(c) for c in range(k)]
    names = []
    for c in range(k):
        values = sorted({str(v) for v in cohort.loc[cohort["label"] == c, "label_name"].dropna()})
        names.append("/".join(values) if values else str(c))
    return names


def _numeric_order(values: list[str]) -> list[str]:
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def map_labels(
    values: pd.Series,
    *,
    label_map: Mapping[Any, int] | None = None,
    threshold: float | None = None,
    source: str = "labels",
    column: str = "label",
    auto_classes: bool = False,
) -> tuple[pd.Series, pd.Series]:
    """(class indices 0..k-1 as a float Series with NaN where unusable, the label names as strings).

    ``threshold``: numeric values ``>= threshold`` -> 1. ``label_map``: value -> class index
    (``0..k-1``; keys compared as strings, so YAML ``{IDC: 0, ILC: 1}`` and ``{0: 0, 1: 1}`` both
    work). Neither: values already ``0..k-1`` (0/1 for a binary task) are kept; other values
    need ``auto_classes`` (``task=custom``), which numbers the distinct values in sorted order.
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
        try:
            mapping = {str(k).strip(): int(v) for k, v in label_map.items()}
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"task.label_map values must be class indices 0..k-1, got {dict(label_map)}"
            ) from err
        k = len(set(mapping.values()))
        if k < 2 or sorted(set(mapping.values())) != list(range(k)):
            raise ConfigError(
                f"task.label_map must map onto 0..k-1 with k >= 2 classes (0 and 1 for a binary task), got {dict(label_map)}"
            )
        labels = names.map(lambda v: np.nan if pd.isna(v) else mapping.get(v, np.nan)).astype(np.float64)
        unmapped = sorted({v for v in names.dropna() if v not in mapping})
        if unmapped:
            warn(
                f"{source}: {int(names.isin(unmapped).sum())} row(s) with {column!r} values not in label_map are left out: {preview(unmapped, 10)} (label_map: {mapping})"
            )
        return labels, names
    present = sorted(set(names.dropna()))
    as_index = [str(c) for c in range(max(len(present), 2))]
    if set(present) <= {"0", "1"} or (len(present) > 2 and present == sorted(as_index[: len(present)])):
        return names.map(lambda v: np.nan if pd.isna(v) else float(v)).astype(np.float64), names
    if auto_classes:
        mapping = {v: i for i, v in enumerate(_numeric_order(present))}
        return names.map(lambda v: np.nan if pd.isna(v) else float(mapping[v])).astype(np.float64), names
    raise InputError(
        f"{source}: column {column!r} holds {preview(present, 10)}; give task.label_map (value: class index) "
        f"or task.threshold, or number the classes in sorted order with task.auto_classes=true (task=custom does)"
    )


def read_labels(
    path: str | Path,
    *,
    slide_col: str = "slide_id",
    case_col: str | None = "case_id",
    label_col: str = "label",
    label_map: Mapping[Any, int] | None = None,
    threshold: float | None = None,
    auto_classes: bool = False,
) -> pd.DataFrame:
    """Read a task's labels CSV into a cohort table ``slide_id, case_id, label, label_name``.

    ``case_col=None``: each slide is its own patient. Rows with a missing or unmapped label
    are dropped with a warning; duplicated slides must agree on the label.
    """
    path = resolve_path(path)
    wanted = [c for c in (slide_col, case_col, label_col) if c is not None]
    ids = [c for c in (slide_col, case_col) if c is not None]
    table, source = read_labels_table(
        path, columns=wanted, id_columns=ids, key="task.labels", columns_fix=COLUMN_KEYS
    )
    # the rows without a label go first (with a warning), so map_labels sees only labelled rows
    table = labelled_rows(table, slide_col=slide_col, label_col=label_col, source=source, warn=warn)
    labels, names = map_labels(
        table[label_col],
        label_map=label_map,
        threshold=threshold,
        source=source,
        column=label_col,
        auto_classes=auto_classes,
    )
    cohort = pd.DataFrame(
        {
            "slide_id": table[slide_col],
            "case_id": table[case_col] if case_col else table[slide_col],
            "label": labels,
            "label_name": names,
        }
    )
    cohort = cohort[cohort["label"].notna()]  # values label_map leaves out (map_labels warned)
    cohort = one_label_per_slide(cohort, slide_col="slide_id", label_col="label", source=source)
    cohort["label"] = cohort["label"].astype(np.int64)
    if cohort.empty:
        raise InputError(
            f"{path}: no labelled slides left (check task.label_col, task.label_map, task.threshold)"
        )
    return cohort
