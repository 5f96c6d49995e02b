"""Coverage: every labelled slide has a bag in every feature set, so every set sees one cohort.

The paired comparison of feature sets (same folds, same seeds) only means something when every
set is trained and tested on the same slides. :func:`check_coverage` compares the labels table
with each bag directory before anything is read: a labelled slide without a bag is a
:class:`~zoomfeat.runtime.errors.BagError` listing them (``task.missing_bags=error``), or the slide
leaves the cohort of *every* set with a warning (``drop``); bags nobody labelled are ignored with a
:class:`~zoomfeat.mil.bagset.BenchWarning`. Instance CSVs are checked when they are read
(:func:`zoomfeat.mil.instance_csv.load_instance_csv`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from zoomfeat.bags import list_bags
from zoomfeat.mil.bagset import preview, warn
from zoomfeat.mil.sources import is_instance_csv
from zoomfeat.runtime.errors import BagError, ConfigError


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

    Args:
        cohort: slide_id, case_id, label (:func:`zoomfeat.mil.labels.read_labels`).
        sources: feature set -> its source (instance CSVs are skipped: checked when read).
        missing_bags: ``task.missing_bags``.
        labels: the labels file, named in the error.

    Returns:
        The cohort, without the dropped slides (``drop``).
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
