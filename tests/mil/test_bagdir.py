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


def test_memory_estimate_covers_features_preload_and_per_bag_cost(tmp_path):
    """The in-memory estimate counts the features as held (float16 here: half the float32 file's
    feature bytes), the fold's float32 copy, and BAG_OVERHEAD_BYTES a bag: never less than what the
    loaded bag set holds plus the per-bag cost."""
    from zoomfeat.mil.bagdir import BAG_OVERHEAD_BYTES, memory_estimate

    table, feats = planted_bags(n_cases=6, dim=8, seed=3)
    src = write_bags(tmp_path, "x", feats)
    cohort = read_labels(_labels(tmp_path, table), label_map={"IDC": 0, "ILC": 1})
    bags = load_bag_dir(src, cohort, feature_set="x", in_memory=True, dtype="float16", progress=False)
    paths = sorted(src.glob("*.h5"))
    estimate = memory_estimate(paths, "float16")
    held = sum(b.nbytes for b in bags.bags) + sum(c.nbytes for c in bags.coords)
    assert estimate >= 3 * held + len(paths) * BAG_OVERHEAD_BYTES  # float16 + float32 copy + per bag
    files = sum(p.stat().st_size for p in paths)
    f16 = files * 2 // 4  # float32 files held as float16
    assert estimate == f16 + 2 * f16 + len(paths) * BAG_OVERHEAD_BYTES
