"""Reading a feature set from an instance CSV: one row per instance, bag label, bag id, features.

The classic MIL sets (MUSK1/2 in ``zoomfeat/data/mil/``) come this way. A header is detected
when the first row's feature cells are not all numbers; ``task.csv`` names the label and bag-id
columns (positions, or names with a header). Without a labels table each bag's label is its
instances' label (which must be constant within the bag) and each bag is its own patient; with
one, the table's labels win and bags nobody labelled are ignored with a
:class:`~zoomfeat.mil.bagset.BenchWarning`. An unreadable CSV, non-numeric or non-finite features,
or a labelled bag the CSV lacks is a :class:`~zoomfeat.runtime.errors.BagError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.mil.bagset import BagSet, as_dtype, preview, resolve_path, warn
from zoomfeat.mil.labels import class_names, map_labels
from zoomfeat.runtime.errors import BagError


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise BagError(f"{path}: not a readable instance CSV ({err}) (task.bags=)") from err


def _csv_has_header(path: Path, sep: str | None) -> bool:
    first = _read_csv(path, sep=sep, header=None, nrows=1, engine="python" if sep is None else "c")
    return not all(pd.api.types.is_number(v) for v in first.iloc[0, 2:].tolist())


def _csv_column(columns: list, key: int | str, *, header: bool, path: Path, what: str) -> Any:
    """The column named by ``key``: a position, or a name when the CSV has a header."""
    if isinstance(key, int):
        if key >= len(columns):
            raise BagError(f"{path}: no column {key} for the {what} ({len(columns)} columns)")
        return columns[key]
    if not header or key not in columns:
        raise BagError(f"{path}: no column {key!r} for the {what} (columns: {columns[:10]}...)")
    return key


def _cohort_from_csv(
    table: pd.DataFrame,
    bag_ids: pd.Series,
    *,
    lab: Any,
    label_map: Mapping[Any, int] | None,
    path: Path,
    auto_classes: bool = False,
) -> pd.DataFrame:
    """Without a labels table: each bag's label is its instances' (constant) label; each bag is its own patient."""
    per_bag = table.groupby(bag_ids)[lab].nunique()
    mixed = per_bag[per_bag > 1].index.tolist()
    if mixed:
        raise BagError(
            f"{path}: bag(s) {preview(mixed, 10)} have instances with different labels; column {lab} must be the bag label"
        )
    first = table.groupby(bag_ids, sort=False)[lab].first()
    labels, names = map_labels(
        first,
        label_map=label_map,
        threshold=None,
        source=str(path),
        column=str(lab),
        auto_classes=auto_classes,
    )
    keep = [b for b in dict.fromkeys(bag_ids) if not np.isnan(labels[b])]
    return pd.DataFrame(
        {
            "slide_id": keep,
            "case_id": keep,
            "label": [int(labels[b]) for b in keep],
            "label_name": [names[b] for b in keep],
        }
    )


def load_instance_csv(
    path: str | Path,
    feature_set: str = "instances",
    *,
    cohort: pd.DataFrame | None = None,
    label_col: int | str = 0,
    bag_col: int | str = 1,
    header: bool | str = "auto",
    label_map: Mapping[Any, int] | None = None,
    dtype: str | np.dtype = "float16",
    auto_classes: bool = False,
) -> BagSet:
    """Read an instance CSV (one row per instance: bag label, bag id, features...).

    Without ``cohort`` the labels come from the CSV (constant within a bag) and every bag is
    its own patient; with it (a task labels table naming bag ids as slide ids) the CSV's
    label column is ignored. Bags are held in memory as ``dtype``, in the cohort's order.

    Args:
        path: the CSV (``.tsv``: tab-separated).
        feature_set: the set's name.
        cohort: slide_id (= bag id), case_id, label; None: from the CSV.
        label_col, bag_col: positions, or names when the CSV has a header.
        header: True, False or ``"auto"`` (a header when the first row's features are not numbers).
        label_map: label value -> class index (without a cohort).
        dtype: the in-memory dtype.
        auto_classes: number the CSV's labels in sorted order.

    Returns:
        The :class:`~zoomfeat.mil.bagset.BagSet` (bags (N_b, D), no coords; class names when
        the labels came from the CSV).
    """
    path = resolve_path(path)
    if not path.is_file():
        raise BagError(f"no instance CSV at {path} (task.bags=)")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    has_header = _csv_has_header(path, sep) if header == "auto" else bool(header)
    table = _read_csv(path, sep=sep, header=0 if has_header else None)
    columns = list(table.columns)
    lab = _csv_column(columns, label_col, header=has_header, path=path, what="bag label")
    bag = _csv_column(columns, bag_col, header=has_header, path=path, what="bag id")
    feat_cols = [c for c in columns if c not in (lab, bag)]
    non_numeric = [c for c in feat_cols if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise BagError(f"{path}: feature column(s) {non_numeric[:5]} are not numeric")
    if not feat_cols:
        raise BagError(f"{path}: no feature columns after the label and bag id columns")
    bag_ids = table[bag].map(
        lambda v: str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v)
    )
    rows = {b: np.flatnonzero((bag_ids == b).to_numpy()) for b in dict.fromkeys(bag_ids)}
    names = None
    if cohort is None:
        cohort = _cohort_from_csv(
            table, bag_ids, lab=lab, label_map=label_map, path=path, auto_classes=auto_classes
        )
        names = class_names(cohort)
    else:
        lacking = [s for s in cohort["slide_id"] if s not in rows]
        if lacking:
            raise BagError(f"{len(lacking)} labelled bag(s) are not in {path}: {preview(lacking)}")
        unlabelled = sorted(set(rows) - set(cohort["slide_id"]))
        if unlabelled:
            warn(
                f"{len(unlabelled)} bag(s) in {path} have no label and are ignored: {preview(unlabelled, 10)}"
            )
    features = table[feat_cols].to_numpy(dtype=np.float32)
    bad = ~np.isfinite(features)
    if bad.any():
        rows_bad = np.flatnonzero(bad.any(axis=1))
        bags_bad = list(dict.fromkeys(bag_ids.iloc[rows_bad]))
        raise BagError(
            f"feature set {feature_set!r}: {path} holds {int(bad.sum())} non-finite or empty feature value(s) "
            f"(NaN/inf/blank) in {len(rows_bad)} row(s) (first at data row {int(rows_bad[0]) + 1}; bag(s) "
            f"{preview(bags_bad, 5)}); fix or remove those rows"
        )
    dtype = np.dtype(dtype)
    slide_ids = cohort["slide_id"].astype(str).tolist()
    return BagSet(
        feature_set=feature_set,
        source=path,
        slide_ids=slide_ids,
        case_ids=cohort["case_id"].astype(str).tolist(),
        labels=np.array(cohort["label"], dtype=np.int64),
        dim=len(feat_cols),
        n_instances=np.asarray([len(rows[s]) for s in slide_ids], dtype=np.int64),
        bags=[as_dtype(features[rows[s]], dtype, f"{path} bag {s}") for s in slide_ids],
        coords=[None] * len(slide_ids),
        class_names=names,
    )
