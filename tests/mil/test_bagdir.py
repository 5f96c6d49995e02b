"""zoomfeat.mil.bagdir: empty bags are skipped with a warning; mixed feature widths are refused."""

import numpy as np
import pytest

from zoomfeat.mil.bagdir import load_bag_dir
from zoomfeat.mil.bagset import BenchWarning
from zoomfeat.mil.labels import read_labels
from zoomfeat.runtime.errors import BagError

from .bagfactory import planted_bags, write_bags


def _labels(tmp_path, table, name="labels.csv"):
    path = tmp_path / name
    table.to_csv(path, index=False)
    return path


def test_mixed_dims_error_and_empty_bags_skipped(tmp_path):
    table, feats = planted_bags(n_cases=6, dim=8, seed=3)
    slides = list(feats)
    feats[slides[1]] = np.zeros((0, 8), np.float32)
    src = write_bags(tmp_path, "x", feats)
    cohort = read_labels(_labels(tmp_path, table), label_map={"IDC": 0, "ILC": 1})
    with pytest.warns(BenchWarning, match=rf"1 empty bag\(s\) \(no tissue\) are skipped: {slides[1]}"):
        bags = load_bag_dir(src, cohort, feature_set="x", progress=False)
    assert slides[1] not in bags.slide_ids and bags.skipped == [slides[1]] and len(bags) == 5
    feats[slides[2]] = np.ones((5, 12), np.float32)
    src = write_bags(tmp_path / "mixed", "x", feats)
    with pytest.raises(BagError, match=r"different feature widths \[8, 12\]"):
        load_bag_dir(src, cohort, feature_set="x", progress=False)
