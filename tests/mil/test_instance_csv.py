"""zoomfeat.mil.instance_csv: the shipped MUSK CSVs, header detection, a labels table, mixed labels."""

import numpy as np
import pandas as pd
import pytest

from zoomfeat.mil.bagset import BenchWarning, resolve_path
from zoomfeat.mil.instance_csv import load_instance_csv
from zoomfeat.runtime.errors import BagError


def test_shipped_musk_csvs_parse():
    musk1 = load_instance_csv("pkg:zoomfeat/data/mil/musk1.csv")
    assert len(musk1) == 92 and musk1.dim == 166 and int(musk1.n_instances.sum()) == 476
    assert np.bincount(musk1.labels).tolist() == [45, 47]
    musk2 = load_instance_csv(resolve_path("pkg:zoomfeat/data/mil/musk2.csv"))
    assert (
        len(musk2) == 102
        and int(musk2.n_instances.sum()) == 6598
        and np.bincount(musk2.labels).tolist() == [63, 39]
    )
    raw = pd.read_csv(resolve_path("pkg:zoomfeat/data/mil/musk1.csv"), header=None)
    first = raw[raw[1] == raw[1].iloc[0]]
    np.testing.assert_array_equal(
        musk1.features(0).astype(np.float32), first.iloc[:, 2:].to_numpy(np.float32)
    )


def test_instance_csv_header_detection_labels_table_and_mixed_labels(tmp_path):
    rows = pd.DataFrame(
        {
            "y": [1, 1, 0, 0, 0],
            "bag": ["b1", "b1", "b2", "b2", "b3"],
            "f0": [1.0, 2, 3, 4, 5],
            "f1": [0.5, 0.1, 0.2, 0.3, 0.4],
        }
    )
    with_header = tmp_path / "with_header.csv"
    rows.to_csv(with_header, index=False)
    bags = load_instance_csv(with_header)
    assert bags.slide_ids == ["b1", "b2", "b3"] and bags.labels.tolist() == [1, 0, 0] and bags.dim == 2
    cohort = pd.DataFrame({"slide_id": ["b1", "b2"], "case_id": ["p", "q"], "label": [0, 1]})
    with pytest.warns(BenchWarning, match=r"1 bag\(s\) in .* have no label.*b3"):
        relabelled = load_instance_csv(with_header, cohort=cohort)
    assert relabelled.labels.tolist() == [0, 1] and relabelled.case_ids == ["p", "q"]
    rows.loc[1, "y"] = 0
    rows.to_csv(with_header, index=False, header=False)
    with pytest.raises(BagError, match=r"bag\(s\) b1 have instances with different labels"):
        load_instance_csv(with_header)
