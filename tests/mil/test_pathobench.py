"""zoomfeat.mil.pathobench: the benchmark's folds as Patho-Bench reads them.

The reader below does what Patho-Bench does with a local split (``patho_bench/SplitFactory.py``
``SplitFactory.from_local`` + ``get_task_info``, and ``patho_bench/datasets/DataSplit.py``
``DataSplit.__init__`` / ``convert_to_json``, at Patho-Bench 660e770): read the TSV, require the
config keys, group rows by the sample column, require one label and one part per fold per
sample, and order the ``fold_k`` columns by k.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from zoomfeat.mil.pathobench import write_pathobench_splits
from zoomfeat.mil.splits import make_splits


def pathobench_read(tsv, config):
    """Patho-Bench's reading of a local split: list of {id, labels, folds, slide_id} and task info."""
    info = yaml.safe_load(open(config))
    assert isinstance(info["sample_col"], str) and isinstance(info["extra_cols"], list)
    assert isinstance(info["label_dict"], dict) and isinstance(info["metrics"], list)
    df = pd.read_csv(tsv, sep="\t", dtype={"case_id": str, "slide_id": str, "id": str})
    df = df.dropna(subset=[info["task_col"]])
    samples = []
    for sample_id in df[info["sample_col"]].unique():
        rows = df[df[info["sample_col"]] == sample_id]
        assert len(rows.drop_duplicates(subset=[info["task_col"]])) == 1, "inconsistent labels"
        cols = sorted((c for c in rows.columns if "fold_" in c), key=lambda c: int(c.split("_")[-1]))
        folds = []
        for c in cols:
            parts = set(rows[c].values)
            assert len(parts) == 1, f"inconsistent {c} for {sample_id}"
            folds.append(parts.pop())
        samples.append(
            {"id": str(sample_id), "labels": {info["task_col"]: rows[info["task_col"]].iloc[0]},
             "folds": folds, "slide_id": rows["slide_id"].tolist()}
        )  # fmt: skip
    return samples, info


@pytest.fixture
def splits():
    # 12 patients, some with two slides, 3 classes; 3 folds x 2 repeats with a validation part
    slides = [f"s{i}" for i in range(18)]
    cases = [f"p{i % 12}" for i in range(18)]
    labels = [int(c[1:]) % 3 for c in cases]
    return make_splits(
        pd.Series(slides), pd.Series(cases), pd.Series(labels), folds=3, repeats=2, seed=0, val_fraction=0.3
    )


def test_patho_bench_reads_the_same_folds(splits, tmp_path):
    tsv, cfg = write_pathobench_splits(splits, tmp_path, "subtype", ["IDC", "ILC", "other"])
    assert tsv == tmp_path / "pathobench" / "subtype" / "k=all.tsv"
    samples, info = pathobench_read(tsv, cfg)
    assert info["label_dict"] == {"IDC": 0, "ILC": 1, "other": 2} and info["metrics"] == [
        "macro-ovr-auc",
        "bacc",
    ]
    assert len(samples) == 12 and all(len(s["folds"]) == 6 for s in samples)
    by_slide = {slide: s for s in samples for slide in s["slide_id"]}
    for row in splits.itertuples():
        k = int(row.repeat) * 3 + int(row.fold)
        sample = by_slide[row.slide_id]
        assert sample["folds"][k] == row.part  # the same part of the same fold, slide by slide
        assert sample["id"] == row.case_id and sample["labels"]["subtype"] == row.label
    assert {p for s in samples for p in s["folds"]} == {"train", "val", "test"}
