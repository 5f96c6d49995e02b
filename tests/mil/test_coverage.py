"""zoomfeat.mil.coverage: labelled slides without bags are listed (or dropped), unlabelled bags warned."""

import pandas as pd
import pytest

from zoomfeat.mil.bagdir import load_bag_dir
from zoomfeat.mil.bagset import BenchWarning
from zoomfeat.mil.coverage import check_coverage
from zoomfeat.mil.labels import read_labels
from zoomfeat.runtime.errors import BagError


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
        load_bag_dir(sources["good"], bigger, feature_set="good", progress=False)


def test_bags_without_labels_warn(planted):
    cohort = read_labels(planted["labels"], label_map={"IDC": 0, "ILC": 1}).iloc[:30]
    with pytest.warns(BenchWarning, match=r"10 bag\(s\) in .*features_good have no label and are ignored"):
        check_coverage(cohort, {"good": planted["root"] / "features_good"})
