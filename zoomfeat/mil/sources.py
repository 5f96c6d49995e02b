"""Bag sources: where a feature set's bags are, whether they cover the cohort, and reading them.

Two kinds of source:

* a TRIDENT-layout bag directory, ``features_{set}/{slide_id}.h5`` (what ``zoomfeat.extract``
  writes), read only through :mod:`zoomfeat.bags`;
* an instance CSV, one row per instance: bag label, bag id, then the features (the classic
  MIL sets in ``zoomfeat/data/mil/``; a header is detected automatically when present).

:func:`resolve_source` finds a feature set's source from ``task.bags``; :func:`check_coverage`
checks every labelled slide has a bag in every set (so all sets see one cohort);
:func:`load_feature_set` reads one set into a :class:`~zoomfeat.mil.bagset.BagSet`. Bags held in
memory are estimated first: float32 on disk -> ``dtype`` in RAM, so ``file bytes * itemsize / 4``
must fit in ``memory_fraction`` of the available RAM, else they are read on each access.

A missing source, a labelled slide with no bag, a damaged bag (unreadable, or zoomfeat's without
its ``complete`` mark), non-finite features, bags of one set written with different configs
(:mod:`zoomfeat.mil.provenance`), mixed feature widths or an unreadable CSV is a
:class:`~zoomfeat.runtime.errors.BagError` naming the file and the feature set; bags nobody labelled and empty bags
are a :class:`~zoomfeat.mil.bagset.BenchWarning`. See ``docs/ARCHITECTURE.md`` (MIL benchmark).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.bags import FEATURE_SET_MAG, bag_path, list_bags, open_bag
from zoomfeat.mil.bagset import BagSet, as_dtype, preview, resolve_path, warn
from zoomfeat.mil.labels import class_names, map_labels
from zoomfeat.mil.provenance import bag_provenance, check_one_recipe, is_zoomfeat_bag
from zoomfeat.runtime.errors import BagError, ConfigError, InputError


def resolve_source(bags: str | Path, feature_set: str) -> Path:
    """Where ``feature_set``'s bags are.

    ``bags`` may contain ``{set}`` (formatted with the feature set); be an instance CSV; be a
    ``features_{set}`` directory itself; hold ``features_{set}/``; or be a TRIDENT job directory
    (``zoomfeat.extract``'s output, or TRIDENT's own) holding
    ``{mag}x_{px}px_{overlap}px_overlap/features_{set}/`` for any set name.
    """
    text = str(bags)
    if "{set}" in text:
        path = resolve_path(text.replace("{set}", feature_set))
        if not path.exists():
            raise BagError(f"no bags for feature set {feature_set!r} at {path} (task.bags={text})")
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
        raise BagError(f"no bag source at {root} (task.bags=): check the path")
    found = [d for d in _mag_dirs(root) if (d / f"features_{feature_set}").is_dir()]
    if len(found) == 1:
        return found[0] / f"features_{feature_set}"
    if len(found) > 1:
        raise BagError(
            f"feature set {feature_set!r} is in {len(found)} TRIDENT directories under {root} "
            f"({', '.join(d.name for d in found)}); point task.bags at the one to use (e.g. task.bags={found[0]})"
        )
    have = available_sets(root)
    raise BagError(
        f"no bags for feature set {feature_set!r} under {root}; looked for features_{feature_set}/ there and in "
        f"{{mag}}x_{{px}}px_{{overlap}}px_overlap/ directories; feature sets found: {have or 'none'}"
    )


#: TRIDENT's job-directory names: ``{mag}x_{px}px_{overlap}px_overlap``
TRIDENT_DIR = re.compile(r"^\d+(\.\d+)?x_\d+px_\d+px_overlap$")


def _mag_dirs(root: Path) -> list[Path]:
    """TRIDENT-layout directories ``{mag}x_{px}px_{overlap}px_overlap`` directly under ``root``."""
    return sorted(d for d in root.iterdir() if d.is_dir() and TRIDENT_DIR.match(d.name))


def available_sets(bags: str | Path) -> list[str]:
    """Feature-set names under a bag root: ``features_*/`` in it and in its TRIDENT directories
    (any name: ``features_conch_v15`` from TRIDENT as well as zoomfeat's own)."""
    root = resolve_path(str(bags))
    if not root.is_dir():
        return []
    if root.name.startswith("features_"):
        return [root.name[len("features_") :]]
    names = []
    for d in [root, *_mag_dirs(root)]:
        names += [
            p.name[len("features_") :] for p in d.iterdir() if p.is_dir() and p.name.startswith("features_")
        ]
    return sorted(set(names))


def expand_feature_sets(patterns: list[str], bags: str | Path | None) -> list[str]:
    """``feature_sets`` with glob patterns (``uni_*``, ``*_20x``) expanded against the sets under
    ``task.bags`` (:func:`available_sets`), in the order given, each set once.

    A pattern matching nothing is a :class:`BagError` listing the sets found; plain names are kept
    (their source is checked by :func:`resolve_source`), as is everything for a ``{set}`` path or a file.
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
                    f"feature_sets pattern {pattern!r} matches no feature set under {bags} (found: {have or 'none'})"
                )
        out += [n for n in names if n not in out]
    return out


def is_instance_csv(source: Path) -> bool:
    """Whether ``source`` is an instance CSV (a file) rather than a bag directory."""
    return source.is_file() and source.suffix.lower() in (".csv", ".tsv", ".txt", ".gz")


def check_coverage(
    cohort: pd.DataFrame,
    sources: Mapping[str, Path],
    missing_bags: str = "error",
    labels: str | Path | None = None,
) -> pd.DataFrame:
    """Check every labelled slide has a bag in every bag-directory source.

    ``missing_bags="error"``: a :class:`BagError` listing them; ``"drop"``: leave those slides
    out of the whole benchmark (so every feature set sees the same cohort) with a warning.
    Bags nobody labelled are ignored with a warning.
    """
    if missing_bags not in ("error", "drop"):
        raise ConfigError(f"task.missing_bags must be 'error' or 'drop', got {missing_bags!r}")
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
            warn(
                f"{len(unlabelled)} bag(s) in {source} have no label and are ignored: {preview(unlabelled, 10)}"
            )
    if absent:
        lines = "; ".join(f"{fs} ({sources[fs]}): {preview(ids)}" for fs, ids in absent.items())
        if missing_bags == "error":
            n = len(set().union(*absent.values()))
            where = f"{labels}: " if labels else ""
            raise BagError(
                f"{where}{n} labelled slide(s) have no bag: {lines}. Extract them, or pass task.missing_bags=drop to leave them out"
            )
        drop = set().union(*absent.values())
        warn(f"leaving out {len(drop)} labelled slide(s) with no bag: {lines}")
        cohort = cohort[~cohort["slide_id"].isin(drop)].reset_index(drop=True)
    return cohort


def read_checked_bag(path: Path, feature_set: str) -> Any:
    """Read one bag, refusing a damaged or non-finite one with a :class:`BagError` naming the
    file and its feature set.

    Damaged: the file cannot be opened or read as a bag (a truncated copy), or zoomfeat wrote it
    (it carries ``config_hash``) but it lacks ``complete = True``. Other tools' bags carry no
    completeness mark and are accepted when readable.
    """
    fix = "delete it and re-extract the slide (or delete it and pass task.missing_bags=drop)"
    try:
        bag = open_bag(path, np.float32)
    except (OSError, KeyError, ValueError) as err:  # BagError is a ValueError
        reason = str(err).replace(str(path), "").strip(" :;") or type(err).__name__
        raise BagError(f"feature set {feature_set!r}: damaged bag {path} ({reason}); {fix}") from err
    if is_zoomfeat_bag(bag.attrs) and not bag.attrs.get("complete", False):
        raise BagError(
            f"feature set {feature_set!r}: damaged bag {path} (written by zoomfeat but not marked complete); {fix}"
        )
    finite = np.isfinite(bag.features)
    if not finite.all():
        bad_rows = int((~finite).any(axis=1).sum())
        raise BagError(
            f"feature set {feature_set!r}: bag {path} holds {int((~finite).sum())} non-finite feature value(s) "
            f"(NaN/inf) in {bad_rows} of {len(bag)} tile(s); re-extract the slide with precision=fp32 or bf16 "
            f"(fp16 overflows to inf), or leave it out"
        )
    return bag


def _fits_in_memory(n_bytes: int, memory_fraction: float) -> bool:
    """Whether ``n_bytes`` fit in ``memory_fraction`` of the available RAM (bags on disk are
    float32, so ``dtype`` needs about ``file bytes * itemsize / 4``)."""
    import psutil

    return n_bytes <= memory_fraction * psutil.virtual_memory().available


def _check_dims(dims: Mapping[str, int], source: Path) -> int:
    distinct = sorted(set(dims.values()))
    if len(distinct) > 1:
        examples = {d: [s for s, v in dims.items() if v == d][:3] for d in distinct}
        raise BagError(
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
        raise BagError(f"{len(lacking)} labelled slide(s) have no bag in {bag_dir}: {preview(lacking)}")
    paths = [have[s] for s in cohort["slide_id"]]
    if in_memory == "auto":
        estimate = sum(p.stat().st_size for p in paths) * dtype.itemsize // 4
        in_memory = _fits_in_memory(estimate, memory_fraction)
        if not in_memory:
            warn(
                f"{feature_set}: bags (~{estimate / 2**30:.1f} GiB as {dtype}) do not fit in memory; reading them from {bag_dir} on each access"
            )
    keep, bags, coords, dims, sizes, empty, records = [], [], [], {}, [], [], {}
    for row, path in enumerate(
        tqdm(paths, desc=f"load {feature_set}", unit="bag", disable=not progress, leave=False)
    ):
        bag = read_checked_bag(path, feature_set)
        slide = cohort["slide_id"].iloc[row]
        records[slide] = bag_provenance(bag.attrs)
        dims[slide] = bag.features.shape[1]
        if len(bag) == 0:
            empty.append(slide)
            continue
        keep.append(row)
        sizes.append(len(bag))
        if in_memory:
            bags.append(as_dtype(bag.features, dtype, str(path)))
            coords.append(bag.coords)
    dim = _check_dims(dims, bag_dir)
    provenance = check_one_recipe(feature_set, bag_dir, records)
    if empty:
        warn(f"{feature_set}: {len(empty)} empty bag(s) (no tissue) are skipped: {preview(empty)}")
    if not keep:
        raise BagError(f"{bag_dir}: every labelled bag is empty (no tissue)")
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
        provenance=provenance,
    )


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise BagError(f"{path}: not a readable instance CSV ({err}) (task.bags=)") from err


def _csv_has_header(path: Path, sep: str | None) -> bool:
    first = _read_csv(path, sep=sep, header=None, nrows=1, engine="python" if sep is None else "c")
    return not all(pd.api.types.is_number(v) for v in first.iloc[0, 2:].tolist())


def _csv_column(columns: list, key: int | str, header: bool, path: Path, what: str) -> Any:
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
    labels, names = map_labels(first, label_map, None, str(path), str(lab), auto_classes)
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
    """
    path = resolve_path(path)
    if not path.is_file():
        raise BagError(f"no instance CSV at {path} (task.bags=)")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    if header == "auto":
        header = _csv_has_header(path, sep)
    table = _read_csv(path, sep=sep, header=0 if header else None)
    columns = list(table.columns)
    lab = _csv_column(columns, label_col, header, path, "bag label")
    bag = _csv_column(columns, bag_col, header, path, "bag id")
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
        cohort = _cohort_from_csv(table, bag_ids, lab, label_map, path, auto_classes)
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
    """Load one feature set from a bag directory or an instance CSV (``csv_options``: task.csv + label_map)."""
    if is_instance_csv(source):
        return load_instance_csv(source, feature_set, cohort, dtype=dtype, **dict(csv_options or {}))
    if cohort is None:
        raise InputError(f"{source} is a bag directory: the task needs a labels CSV (task.labels=)")
    return load_bag_dir(
        source,
        cohort,
        feature_set,
        in_memory=in_memory,
        dtype=dtype,
        memory_fraction=memory_fraction,
        progress=progress,
    )
