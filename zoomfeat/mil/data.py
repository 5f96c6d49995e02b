"""MIL benchmark data: the labels table, bag sources and bags held in memory.

Two bag sources:

* a TRIDENT-layout bag directory, ``features_{set}/{slide_id}.h5`` (what ``zoomfeat.extract``
  writes), read only through :mod:`zoomfeat.bags`;
* an instance CSV, one row per instance: bag label, bag id, then the features (the classic
  MIL sets in ``zoomfeat/data/mil/``; no header, detected automatically when present).

A task's labels table is a CSV with a slide column, a patient (case) column and a label
column; ``label_map`` maps the label values to 0/1, or ``threshold`` turns a numeric column
into ``value >= threshold``. Problems get a clear error naming the file (missing columns,
labelled slides with no bag, mixed feature widths) or a :class:`BenchWarning` (bags nobody
labelled, empty bags, rows whose label is missing or unmapped).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.bags import FEATURE_SET_MAG, bag_path, list_bags, open_bag

FLOAT16_MAX = 65504.0


class BenchWarning(UserWarning):
    """A problem in the benchmark's input that is worked around (and worth reading)."""


def _warn(message: str) -> None:
    warnings.warn(message, BenchWarning, stacklevel=3)


def _preview(items: Sequence[Any], n: int = 20) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def resolve_path(path: str | Path) -> Path:
    """A path, or ``pkg:zoomfeat/...`` for a file shipped inside the package (the MUSK sets)."""
    text = str(path)
    if text.startswith("pkg:"):
        package, _, rest = text[4:].lstrip("/").partition("/")
        return Path(str(resources.files(package).joinpath(rest)))
    return Path(text).expanduser()


# ----------------------------------------------------------------------------- labels


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
            raise ValueError(
                f"{source}: column {column!r} must be numeric for threshold={threshold}; got {_preview(sorted(set(map(str, bad))), 5)}"
            )
        labels = (numeric >= float(threshold)).astype(np.float64).where(numeric.notna())
        names = labels.map(lambda v: None if pd.isna(v) else (f">={threshold:g}" if v else f"<{threshold:g}"))
        return labels, names
    names = _label_strings(values)
    if label_map:
        mapping = {str(k).strip(): int(v) for k, v in label_map.items()}
        if sorted(set(mapping.values())) != [0, 1]:
            raise ValueError(f"label_map must map onto 0 and 1 (binary task), got {dict(label_map)}")
        labels = names.map(lambda v: np.nan if pd.isna(v) else mapping.get(v, np.nan)).astype(np.float64)
        unmapped = sorted({v for v in names.dropna() if v not in mapping})
        if unmapped:
            _warn(
                f"{source}: {int(names.isin(unmapped).sum())} row(s) with {column!r} values not in label_map are left out: {_preview(unmapped, 10)} (label_map: {mapping})"
            )
        return labels, names
    allowed = {"0", "1"}
    present = sorted(set(names.dropna()))
    if not set(present) <= allowed:
        raise ValueError(
            f"{source}: column {column!r} holds {_preview(present, 10)}; give task.label_map (value: 0/1) or task.threshold"
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
        raise FileNotFoundError(f"no labels file at {path} (task.labels=)")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    table = pd.read_csv(path, sep=sep, dtype={slide_col: str, **({case_col: str} if case_col else {})})
    wanted = [c for c in (slide_col, case_col, label_col) if c is not None]
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise ValueError(
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
        _warn(
            f"{path}: {int(no_label.sum())} row(s) have no {label_col!r} value and are left out: {_preview(cohort.loc[no_label, 'slide_id'])}"
        )
    cohort = cohort[cohort["label"].notna()]
    conflicts = cohort.groupby("slide_id")["label"].nunique()
    conflicts = conflicts[conflicts > 1].index.tolist()
    if conflicts:
        raise ValueError(f"{path}: slide(s) listed with different labels: {_preview(conflicts)}")
    cohort = cohort.drop_duplicates("slide_id").reset_index(drop=True)
    cohort["label"] = cohort["label"].astype(np.int64)
    if cohort.empty:
        raise ValueError(f"{path}: no labelled slides left")
    return cohort


# ----------------------------------------------------------------------------- bag sources


def resolve_source(bags: str | Path, feature_set: str) -> Path:
    """Where ``feature_set``'s bags are.

    ``bags`` may contain ``{set}`` (formatted with the feature set); be an instance CSV; be a
    ``features_{set}`` directory itself; hold ``features_{set}/``; or be a ``zoomfeat.extract``
    output directory (``{mag}x_256px_0px_overlap/features_{set}/``).
    """
    text = str(bags)
    if "{set}" in text:
        path = resolve_path(text.replace("{set}", feature_set))
        if not path.exists():
            raise FileNotFoundError(f"no bags for feature set {feature_set!r} at {path} (task.bags={text})")
        return path
    root = resolve_path(text)
    if root.is_file():
        return root
    tried = [root / f"features_{feature_set}"]
    if feature_set in FEATURE_SET_MAG:
        tried.append(bag_path(root, feature_set, "x").parent)
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    if root.is_dir() and root.name == f"features_{feature_set}":
        return root
    if not root.exists():
        raise FileNotFoundError(f"no bag source at {root} (task.bags=)")
    raise FileNotFoundError(
        f"no bags for feature set {feature_set!r} under {root}; looked for {[str(t) for t in tried]}"
    )


def is_instance_csv(source: Path) -> bool:
    return source.is_file() and source.suffix.lower() in (".csv", ".tsv", ".txt", ".gz")


def check_coverage(
    cohort: pd.DataFrame, sources: Mapping[str, Path], missing_bags: str = "error"
) -> pd.DataFrame:
    """Check every labelled slide has a bag in every bag-directory source.

    ``missing_bags="error"``: a FileNotFoundError listing them; ``"drop"``: leave those slides
    out of the whole benchmark (so every feature set sees the same cohort) with a warning.
    Bags nobody labelled are ignored with a warning.
    """
    if missing_bags not in ("error", "drop"):
        raise ValueError(f"task.missing_bags must be 'error' or 'drop', got {missing_bags!r}")
    absent: dict[str, list[str]] = {}
    for feature_set, source in sources.items():
        if is_instance_csv(source):
            continue
        have = list_bags(source)
        lacking = [s for s in cohort["slide_id"] if s not in have]
        if lacking:
            absent[feature_set] = lacking
        unlabelled = sorted(set(have) - set(cohort["slide_id"]))
        if unlabelled:
            _warn(
                f"{len(unlabelled)} bag(s) in {source} have no label and are ignored: {_preview(unlabelled, 10)}"
            )
    if absent:
        lines = "; ".join(f"{fs} ({sources[fs]}): {_preview(ids)}" for fs, ids in absent.items())
        if missing_bags == "error":
            n = len(set().union(*absent.values()))
            raise FileNotFoundError(
                f"{n} labelled slide(s) have no bag: {lines}. Extract them, or pass task.missing_bags=drop to leave them out"
            )
        drop = set().union(*absent.values())
        _warn(f"leaving out {len(drop)} labelled slide(s) with no bag: {lines}")
        cohort = cohort[~cohort["slide_id"].isin(drop)].reset_index(drop=True)
    return cohort


# ----------------------------------------------------------------------------- bags in memory


@dataclass
class BagSet:
    """One feature set's bags for a cohort, in memory (``bags``) or read on access (``paths``).

    Slides whose bag is empty are not in it (listed in ``skipped``).
    """

    feature_set: str
    source: Path
    slide_ids: list[str]
    case_ids: list[str]
    labels: np.ndarray
    dim: int
    n_instances: np.ndarray
    bags: list[np.ndarray] | None = None
    paths: list[Path] | None = None
    coords: list[np.ndarray | None] | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.slide_ids)

    @property
    def in_memory(self) -> bool:
        return self.bags is not None

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.bags) if self.bags is not None else 0

    def features(self, i: int) -> np.ndarray:
        """Bag ``i``'s features (N, D): the stored array (float16/float32) or read from disk."""
        if self.bags is not None:
            return self.bags[i]
        return open_bag(self.paths[i], np.float32).features

    def get_coords(self, i: int) -> np.ndarray | None:
        if self.coords is not None:
            return self.coords[i]
        if self.paths is not None:
            return open_bag(self.paths[i], np.float32).coords
        return None

    def index(self, slide_ids: Sequence[str]) -> np.ndarray:
        """Positions of ``slide_ids`` in this set (slides it does not hold are skipped)."""
        pos = {s: i for i, s in enumerate(self.slide_ids)}
        return np.asarray([pos[s] for s in slide_ids if s in pos], dtype=np.int64)

    def cohort(self) -> pd.DataFrame:
        return pd.DataFrame({"slide_id": self.slide_ids, "case_id": self.case_ids, "label": self.labels})


def _as_dtype(features: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    if dtype == np.float16 and features.size and np.nanmax(np.abs(features)) > FLOAT16_MAX:
        raise OverflowError(f"{where}: values exceed the float16 range; use data.dtype=float32")
    return np.ascontiguousarray(features, dtype=dtype)


def _fits_in_memory(n_bytes: int, memory_fraction: float) -> bool:
    import psutil

    return n_bytes <= memory_fraction * psutil.virtual_memory().available


def _check_dims(dims: Mapping[str, int], source: Path) -> int:
    distinct = sorted(set(dims.values()))
    if len(distinct) > 1:
        examples = {d: [s for s, v in dims.items() if v == d][:3] for d in distinct}
        raise ValueError(
            f"{source}: bags of one feature set have different feature widths {distinct} (e.g. {examples}); re-extract them with one config"
        )
    return distinct[0]


def load_bag_dir(
    bag_dir: str | Path,
    cohort: pd.DataFrame,
    feature_set: str,
    in_memory: bool | str = "auto",
    dtype: str | np.dtype = "float16",
    memory_fraction: float = 0.5,
    progress: bool = True,
) -> BagSet:
    """Read ``cohort``'s bags from a ``features_{set}`` directory (through zoomfeat.bags).

    ``in_memory="auto"`` holds them in memory as ``dtype`` when they fit in ``memory_fraction``
    of the available RAM, else they are read from disk on each access. Every labelled slide
    must have a bag (see :func:`check_coverage`); empty bags are skipped with a warning.
    """
    from tqdm.auto import tqdm

    bag_dir = Path(bag_dir)
    dtype = np.dtype(dtype)
    have = list_bags(bag_dir)
    lacking = [s for s in cohort["slide_id"] if s not in have]
    if lacking:
        raise FileNotFoundError(
            f"{len(lacking)} labelled slide(s) have no bag in {bag_dir}: {_preview(lacking)}"
        )
    paths = [have[s] for s in cohort["slide_id"]]
    if in_memory == "auto":
        estimate = sum(p.stat().st_size for p in paths) * dtype.itemsize // 4
        in_memory = _fits_in_memory(estimate, memory_fraction)
        if not in_memory:
            _warn(
                f"{feature_set}: bags (~{estimate / 2**30:.1f} GiB as {dtype}) do not fit in memory; reading them from {bag_dir} on each access"
            )
    keep, bags, coords, dims, sizes, empty = [], [], [], {}, [], []
    for row, path in enumerate(
        tqdm(paths, desc=f"load {feature_set}", unit="bag", disable=not progress, leave=False)
    ):
        bag = open_bag(path, np.float32)
        slide = cohort["slide_id"].iloc[row]
        dims[slide] = bag.features.shape[1]
        if len(bag) == 0:
            empty.append(slide)
            continue
        keep.append(row)
        sizes.append(len(bag))
        if in_memory:
            bags.append(_as_dtype(bag.features, dtype, str(path)))
            coords.append(bag.coords)
    dim = _check_dims(dims, bag_dir)
    if empty:
        _warn(f"{feature_set}: {len(empty)} empty bag(s) (no tissue) are skipped: {_preview(empty)}")
    if not keep:
        raise ValueError(f"{bag_dir}: every labelled bag is empty")
    sub = cohort.iloc[keep]
    return BagSet(
        feature_set=feature_set,
        source=bag_dir,
        slide_ids=sub["slide_id"].tolist(),
        case_ids=sub["case_id"].tolist(),
        labels=np.array(sub["label"], dtype=np.int64),
        dim=dim,
        n_instances=np.asarray(sizes, dtype=np.int64),
        bags=bags if in_memory else None,
        coords=coords if in_memory else None,
        paths=None if in_memory else [paths[r] for r in keep],
        skipped=empty,
    )


def _csv_has_header(path: Path, sep: str | None) -> bool:
    first = pd.read_csv(path, sep=sep, header=None, nrows=1, engine="python" if sep is None else "c")
    return not all(pd.api.types.is_number(v) for v in first.iloc[0, 2:].tolist())


def load_instance_csv(
    path: str | Path,
    feature_set: str = "instances",
    cohort: pd.DataFrame | None = None,
    label_col: int | str = 0,
    bag_col: int | str = 1,
    header: bool | str = "auto",
    label_map: Mapping[Any, int] | None = None,
    dtype: str | np.dtype = "float16",
) -> BagSet:
    """Read an instance CSV (one row per instance: bag label, bag id, features...).

    Without ``cohort`` the labels come from the CSV (constant within a bag) and every bag is
    its own patient; with it (a task labels table naming bag ids as slide ids) the CSV's
    label column is ignored.
    """
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no instance CSV at {path} (task.bags=)")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    if header == "auto":
        header = _csv_has_header(path, sep)
    table = pd.read_csv(path, sep=sep, header=0 if header else None)
    columns = list(table.columns)

    def column(key: int | str, what: str):
        if isinstance(key, int) and not header:
            if key >= len(columns):
                raise ValueError(f"{path}: no column {key} for the {what} ({len(columns)} columns)")
            return columns[key]
        if isinstance(key, int):
            return columns[key]
        if key not in columns:
            raise ValueError(f"{path}: no column {key!r} for the {what} (columns: {columns[:10]}...)")
        return key

    lab, bag = column(label_col, "bag label"), column(bag_col, "bag id")
    feat_cols = [c for c in columns if c not in (lab, bag)]
    non_numeric = [c for c in feat_cols if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise ValueError(f"{path}: feature column(s) {non_numeric[:5]} are not numeric")
    if not feat_cols:
        raise ValueError(f"{path}: no feature columns after the label and bag id columns")
    dtype = np.dtype(dtype)
    bag_ids = table[bag].map(
        lambda v: str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v)
    )
    features = table[feat_cols].to_numpy(dtype=np.float32)
    order = list(dict.fromkeys(bag_ids))
    rows = {b: np.flatnonzero((bag_ids == b).to_numpy()) for b in order}
    if cohort is None:
        per_bag = table.groupby(bag_ids)[lab].nunique()
        mixed = per_bag[per_bag > 1].index.tolist()
        if mixed:
            raise ValueError(
                f"{path}: bag(s) {_preview(mixed, 10)} have instances with different labels; column {label_col} must be the bag label"
            )
        first = table.groupby(bag_ids, sort=False)[lab].first()
        labels, names = map_labels(first, label_map, None, str(path), str(lab))
        keep = [b for b in order if not np.isnan(labels[b])]
        cohort = pd.DataFrame({"slide_id": keep, "case_id": keep, "label": [int(labels[b]) for b in keep]})
    else:
        lacking = [s for s in cohort["slide_id"] if s not in rows]
        if lacking:
            raise FileNotFoundError(f"{len(lacking)} labelled bag(s) are not in {path}: {_preview(lacking)}")
        unlabelled = sorted(set(order) - set(cohort["slide_id"]))
        if unlabelled:
            _warn(
                f"{len(unlabelled)} bag(s) in {path} have no label and are ignored: {_preview(unlabelled, 10)}"
            )
    slide_ids = cohort["slide_id"].astype(str).tolist()
    return BagSet(
        feature_set=feature_set,
        source=path,
        slide_ids=slide_ids,
        case_ids=cohort["case_id"].astype(str).tolist(),
        labels=np.array(cohort["label"], dtype=np.int64),
        dim=len(feat_cols),
        n_instances=np.asarray([len(rows[s]) for s in slide_ids], dtype=np.int64),
        bags=[_as_dtype(features[rows[s]], dtype, f"{path} bag {s}") for s in slide_ids],
        coords=[None] * len(slide_ids),
    )


def load_feature_set(
    source: Path,
    feature_set: str,
    cohort: pd.DataFrame | None,
    in_memory: bool | str = "auto",
    dtype: str = "float16",
    memory_fraction: float = 0.5,
    csv_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> BagSet:
    """Load one feature set from a bag directory or an instance CSV."""
    if is_instance_csv(source):
        return load_instance_csv(source, feature_set, cohort, dtype=dtype, **dict(csv_options or {}))
    if cohort is None:
        raise ValueError(f"{source} is a bag directory: the task needs a labels CSV (task.labels=)")
    return load_bag_dir(
        source,
        cohort,
        feature_set,
        in_memory=in_memory,
        dtype=dtype,
        memory_fraction=memory_fraction,
        progress=progress,
    )
