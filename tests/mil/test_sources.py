"""zoomfeat.mil.sources: bag source layouts, coverage of the cohort, bag directories, instance CSVs."""

import numpy as np
import pandas as pd
import pytest

from zoomfeat.bags import bag_path
from zoomfeat.mil.bagset import BenchWarning, resolve_path
from zoomfeat.mil.labels import read_labels
from zoomfeat.mil.sources import check_coverage, load_bag_dir, load_instance_csv, resolve_source
from zoomfeat.runtime.errors import BagError

from .bagfactory import planted_bags, write_bags


def _labels(tmp_path, table, name="labels.csv"):
    path = tmp_path / name
    table.to_csv(path, index=False)
    return path


def test_labelled_slides_without_bags_are_listed(planted, tmp_path):
    cohort = read_labels(planted["labels"], label_map={"IDC": 0, "ILC": 1})
    extra = pd.DataFrame(
        {
            "slide_id": ["TCGA-QQ-0001-01Z-00-DX1", "TCGA-QQ-0002-01Z-00-DX1"],
            "case_id": ["Q1", "Q2"],
            "label": [0, 1],
        }
    )
    bigger = pd.concat([cohort, extra], ignore_index=True)
    sources = {"good": planted["root"] / "features_good", "noise": planted["root"] / "features_noise"}
    with pytest.raises(
        BagError,
        match=r"2 labelled slide\(s\) have no bag.*TCGA-QQ-0001-01Z-00-DX1, TCGA-QQ-0002-01Z-00-DX1.*missing_bags=drop",
    ):
        check_coverage(bigger, sources)
    with pytest.warns(BenchWarning, match="leaving out 2 labelled slide"):
        kept = check_coverage(bigger, sources, missing_bags="drop")
    assert len(kept) == len(cohort)
    with pytest.raises(BagError, match="TCGA-QQ-0001"):
        load_bag_dir(sources["good"], bigger, "good", progress=False)


def test_bags_without_labels_warn(planted):
    cohort = read_labels(planted["labels"], label_map={"IDC": 0, "ILC": 1}).iloc[:30]
    with pytest.warns(BenchWarning, match=r"10 bag\(s\) in .*features_good have no label and are ignored"):
        check_coverage(cohort, {"good": planted["root"] / "features_good"})


def test_mixed_dims_error_and_empty_bags_skipped(tmp_path):
    table, feats = planted_bags(n_cases=6, dim=8, seed=3)
    slides = list(feats)
    feats[slides[1]] = np.zeros((0, 8), np.float32)
    src = write_bags(tmp_path, "x", feats)
    cohort = read_labels(_labels(tmp_path, table), label_map={"IDC": 0, "ILC": 1})
    with pytest.warns(BenchWarning, match=rf"1 empty bag\(s\) \(no tissue\) are skipped: {slides[1]}"):
        bags = load_bag_dir(src, cohort, "x", progress=False)
    assert slides[1] not in bags.slide_ids and bags.skipped == [slides[1]] and len(bags) == 5
    feats[slides[2]] = np.ones((5, 12), np.float32)
    src = write_bags(tmp_path / "mixed", "x", feats)
    with pytest.raises(BagError, match=r"different feature widths \[8, 12\]"):
        load_bag_dir(src, cohort, "x", progress=False)


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


def test_resolve_source_layouts(tmp_path):
    table, feats = planted_bags(n_cases=2, dim=4)
    slide = next(iter(feats))
    # zoomfeat.extract layout: {out}/20x_256px_0px_overlap/features_uni_20x/
    path = bag_path(tmp_path / "extract", "uni_20x", slide)
    write_bags(path.parent.parent, "uni_20x", feats)
    assert resolve_source(tmp_path / "extract", "uni_20x") == path.parent
    assert resolve_source(path.parent.parent, "uni_20x") == path.parent
    assert (
        resolve_source(str(tmp_path / "extract" / "20x_256px_0px_overlap" / "features_{set}"), "uni_20x")
        == path.parent
    )
    assert resolve_source(path.parent, "uni_20x") == path.parent
    with pytest.raises(BagError, match="no bags for feature set 'zoomldm_5x'"):
        resolve_source(tmp_path / "extract", "zoomldm_5x")
    with pytest.raises(BagError, match="no bag source"):
        resolve_source(tmp_path / "absent", "uni_20x")
