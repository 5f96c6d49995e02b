"""Patho-Bench's split format, written from a benchmark's splits (one comparison, two tools).

zoomfeat's ``splits.csv`` is long: one row per (repeat, fold, slide) with ``part`` in
train/val/test. Patho-Bench (``SplitFactory.from_local`` -> ``DataSplit``) wants one row per
slide with the sample column (the patient), ``slide_id``, the task's label column and
``fold_0 .. fold_{K-1}`` holding ``train``/``val``/``test`` for each of its K folds, plus a
``config.yaml`` naming ``sample_col``, ``extra_cols``, ``task_col``, ``label_dict``,
``metrics`` and ``task_type``. The pivot is exact: Patho-Bench's fold ``k = repeat * folds +
fold`` is zoomfeat's (repeat, fold), every patient's slides share one part per fold (the
splits are patient-level), so running Patho-Bench on ``{out_dir}/pathobench/{task}/`` trains
and tests on the very folds the zoomfeat report used.

Layout (Patho-Bench's own, as its hub splits are laid out)::

    {out_dir}/pathobench/{task}/k=all.tsv
    {out_dir}/pathobench/{task}/config.yaml
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from zoomfeat.runtime.atomic import atomic_write_text
from zoomfeat.runtime.errors import InputError

#: Patho-Bench's metric names (ClassificationMixin) for classification tasks
METRICS = ["macro-ovr-auc", "bacc"]


def pathobench_table(splits: pd.DataFrame, task_col: str) -> pd.DataFrame:
    """One row per slide: ``case_id``, ``slide_id``, ``task_col`` (the class index) and ``fold_k``.

    Args:
        splits: zoomfeat's long splits (repeat, fold, part, slide_id, case_id, label).
        task_col: name of the label column in Patho-Bench's table (the task name).

    Returns:
        The wide table, slides in first-seen order, folds ``k = repeat * n_folds + fold``.
    """
    folds = sorted(splits["fold"].unique())
    n_folds = len(folds)
    k = splits["repeat"].astype(int) * n_folds + splits["fold"].astype(int)
    wide = splits.assign(k=k).pivot(index="slide_id", columns="k", values="part")
    if wide.isna().any().any():
        missing = wide.columns[wide.isna().any()].tolist()
        raise InputError(
            f"splits: some slides are in no part of fold(s) {missing}; cannot write Patho-Bench splits"
        )
    wide.columns = [f"fold_{c}" for c in wide.columns]
    meta = splits.drop_duplicates("slide_id").set_index("slide_id")[["case_id", "label"]]
    table = meta.join(wide).reset_index().rename(columns={"label": task_col})
    return table[["case_id", "slide_id", task_col, *wide.columns]]


def write_pathobench_splits(
    splits: pd.DataFrame, out_dir: str | Path, task: str, class_names: Sequence[str]
) -> tuple[Path, Path]:
    """Write ``{out_dir}/pathobench/{task}/k=all.tsv`` and its ``config.yaml``; returns both paths."""
    root = Path(out_dir) / "pathobench" / task
    table = pathobench_table(splits, task)
    tsv = root / "k=all.tsv"
    atomic_write_text(tsv, table.to_csv(sep="\t", index=False))
    config = {
        "task_col": task,
        "sample_col": "case_id",
        "extra_cols": [],
        "label_dict": {str(name): i for i, name in enumerate(class_names)},
        "metrics": list(METRICS),
        "task_type": "classification",
    }
    cfg = root / "config.yaml"
    atomic_write_text(cfg, yaml.safe_dump(config, sort_keys=False))
    return tsv, cfg
