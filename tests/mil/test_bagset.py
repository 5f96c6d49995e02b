"""zoomfeat.mil.bagset: bags held as float16 agree with bags read on access; float16 overflow is refused."""

import numpy as np
import pytest

from zoomfeat.mil.bagdir import load_bag_dir
from zoomfeat.mil.bagset import BagSet
from zoomfeat.mil.labels import read_labels
from zoomfeat.runtime.errors import BagError

from .bagfactory import planted_bags, write_bags


def _labels(tmp_path, table, name="labels.csv"):
    path = tmp_path / name
    table.to_csv(path, index=False)
    return path


def test_bag_dir_in_memory_float16_and_lazy_agree(planted):
    cohort = read_labels(planted["labels"], label_map={"IDC": 0, "ILC": 1})
    src = planted["root"] / "features_good"
    mem = load_bag_dir(src, cohort, feature_set="good", in_memory=True, dtype="float16", progress=False)
    lazy = load_bag_dir(src, cohort, feature_set="good", in_memory=False, progress=False)
    assert mem.in_memory and not lazy.in_memory and mem.dim == 16 and len(mem) == 40
    assert mem.bags[0].dtype == np.float16
    for i in (0, 7):
        ref = planted["feats"][mem.slide_ids[i]]
        np.testing.assert_array_equal(lazy.features(i), ref)
        # float16 rounds to nearest with unit roundoff u = 2^-11 (11-bit significand): |fl(x) - x| <= u |x|
        # for normal numbers; below 2^-14 the subnormal spacing 2^-24 bounds the error by 2^-25.
        np.testing.assert_allclose(mem.features(i).astype(np.float32), ref, rtol=2**-11, atol=2**-25)
        np.testing.assert_array_equal(mem.get_coords(i), lazy.get_coords(i))
    assert mem.labels.tolist() == cohort["label"].tolist()
    auto = load_bag_dir(src, cohort, feature_set="good", in_memory="auto", progress=False)
    assert auto.in_memory  # tiny bags always fit


def test_float16_overflow_is_caught(tmp_path):
    table, feats = planted_bags(n_cases=2, dim=4, seed=0)
    feats[next(iter(feats))][0, 0] = 1e6
    src = write_bags(tmp_path, "big", feats)
    cohort = read_labels(_labels(tmp_path, table), label_map={"IDC": 0, "ILC": 1})
    with pytest.raises(BagError, match="float16 range.*data.dtype=float32"):
        load_bag_dir(src, cohort, feature_set="big", in_memory=True, dtype="float16", progress=False)
    wide = load_bag_dir(src, cohort, feature_set="big", in_memory=True, dtype="float32", progress=False)
    assert wide.bags[0][0, 0] == 1e6


def test_bagset_index_cohort_and_memory():
    bags = BagSet(
        feature_set="x",
        source=None,
        slide_ids=["a", "b", "c"],
        case_ids=["A", "A", "C"],
        labels=np.array([0, 0, 1]),
        dim=2,
        n_instances=np.array([1, 2, 3]),
        bags=[np.zeros((n, 2), np.float16) for n in (1, 2, 3)],
        coords=[None] * 3,
    )
    assert bags.index(["c", "zzz", "a"]).tolist() == [2, 0]  # slides it does not hold are skipped
    assert bags.cohort().values.tolist() == [["a", "A", 0], ["b", "A", 0], ["c", "C", 1]]
    assert bags.in_memory and bags.nbytes == 6 * 2 * 2 and bags.get_coords(1) is None
