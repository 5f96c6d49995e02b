"""Reading a feature set from a TRIDENT-layout bag directory, ``features_{set}/{slide_id}.h5``.

Every bag is read through :mod:`zoomfeat.bags` and checked (:func:`read_checked_bag`): a damaged
bag (unreadable or truncated, or zoomfeat's without its ``complete`` mark), non-finite features,
bags of one set written with different configs (:mod:`zoomfeat.mil.provenance`) or with
different feature widths is a :class:`~zoomfeat.runtime.errors.BagError` naming the file and the
feature set; empty bags (no tissue) are skipped with a :class:`~zoomfeat.mil.bagset.BenchWarning`.

Memory: bags are held in memory as ``dtype`` (float16 by default) when they fit, else read on
each access. The estimate (:func:`memory_estimate`) must fit in ``memory_fraction`` of the
available RAM (``in_memory=auto``):

    bytes = F + min(PRELOAD_MAX_BYTES, F * 4 / itemsize) + n_bags * BAG_OVERHEAD_BYTES,
    F = file bytes * itemsize / disk itemsize

``F``: the features as ``dtype`` (bags on disk are float32 or float16, the disk dtype read from the
first bag; file bytes also count coords and attributes, an upper bound); the second term the
fold's float32 copy of its training and validation bags (:meth:`~zoomfeat.mil.feeding.BagFeeder.preload`);
the third what a bag costs beyond its features (coords, Python objects, the fold loop's per-bag
records). Measured on 500 bags of 6 x 32 features (an extraction's, 20.8 KB files): loading them
grows the RSS by 1.4 KB a bag beyond their features; a whole bench run over them peaks at the
RSS of one over 40 of them (1,034 and 1,037 MB, ``benchmarks/cohort.py bench --small 40``): the
peak is the process's own (torch and the code, ~1 GB), which this estimate does not count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.bags import bag_nbytes, list_bags, open_checked_bag, stored_dtype
from zoomfeat.mil.bagset import BagSet, as_dtype, preview, warn
from zoomfeat.mil.provenance import bag_provenance, check_one_recipe
from zoomfeat.runtime.errors import BagError


def _disk_itemsize(paths: list[Path]) -> int:
    """Bytes per stored feature value of the first readable bag (4 when none is readable: float32)."""
    for path in paths[:1]:
        try:
            return int(stored_dtype(path).itemsize)  # a derived fused bag: its parts'
        except (OSError, KeyError):
            pass  # the check of each bag names it
    return 4


def read_checked_bag(path: Path, feature_set: str) -> Any:
    """Read one bag, refusing a damaged or non-finite one with a :class:`BagError` naming the
    file and its feature set (:func:`zoomfeat.bags.open_checked_bag`, the check every reader of
    bags shares: :class:`zoomfeat.BagDataset` and the exports too).

    Damaged: the file cannot be opened or read as a bag (a truncated copy), or zoomfeat wrote it
    (it carries ``config_hash``) but it lacks ``complete = True``. Other tools' bags carry no
    completeness mark and are accepted when readable.

    Args:
        path: the bag file.
        feature_set: its set, named in errors.

    Returns:
        The :func:`zoomfeat.bags.open_bag` bag: features (N, D) float32, coords (N, 2), attrs.
    """
    return open_checked_bag(path, np.float32, context=f"feature set {feature_set!r}: ")


#: what a loaded bag costs beyond its features during a benchmark run (1.4 KB measured, rounded
#: up for the fold loop's per-bag records; see the module docstring)
BAG_OVERHEAD_BYTES = 4 * 1024


def memory_estimate(paths: Sequence[Path], dtype: str | np.dtype) -> int:
    """Bytes a benchmark run holds for these bags in memory as ``dtype`` (module docstring)."""
    from zoomfeat.mil.feeding import PRELOAD_MAX_BYTES

    itemsize = np.dtype(dtype).itemsize
    features = sum(bag_nbytes(p) for p in paths) * itemsize // _disk_itemsize(list(paths))
    preload = min(PRELOAD_MAX_BYTES, features * 4 // itemsize)
    return features + preload + len(paths) * BAG_OVERHEAD_BYTES


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
    *,
    feature_set: str,
    in_memory: bool | str = "auto",
    dtype: str | np.dtype = "float16",
    memory_fraction: float = 0.5,
    progress: bool = True,
) -> BagSet:
    """Read ``cohort``'s bags from a ``features_{set}`` directory (through zoomfeat.bags).

    ``in_memory="auto"`` holds them in memory as ``dtype`` when they fit in ``memory_fraction``
    of the available RAM, else they are read from disk on each access. Every labelled slide
    must have a bag (see :func:`zoomfeat.mil.coverage.check_coverage`); empty bags are skipped
    with a warning.

    Args:
        bag_dir: the ``features_{set}`` directory.
        cohort: slide_id, case_id, label.
        feature_set: the set's name.
        in_memory: True, False or ``"auto"``.
        dtype: the in-memory dtype.
        memory_fraction: the share of available RAM ``auto`` may use.
        progress: show a progress bar.

    Returns:
        The :class:`~zoomfeat.mil.bagset.BagSet` (cohort order, empty bags left out), with the
        set's recipe as provenance.
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
        estimate = memory_estimate(paths, dtype)
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
