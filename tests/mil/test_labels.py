"""zoomfeat.mil.labels: a labels table -> the cohort (label_map, threshold, plain 0/1, clear errors)."""

import pandas as pd
import pytest

from zoomfeat.mil.bagset import BenchWarning
from zoomfeat.mil.labels import read_labels
from zoomfeat.runtime.errors import ConfigError, InputError


def _labels(tmp_path, table, name="labels.csv"):
    path = tmp_path / name
    table.to_csv(path, index=False)
    return path


def test_read_labels_maps_and_drops_unmapped(tmp_path):
    table = pd.DataFrame(
        {
            "slide": ["a1", "a2", "b1", "c1", "d1"],
            "patient": ["A", "A", "B", "C", "D"],
            "dx": ["IDC", "IDC", "ILC", "Mixed", None],
        }
    )
    path = _labels(tmp_path, table)
    with pytest.warns(BenchWarning) as record:
        cohort = read_labels(
            path, slide_col="slide", case_col="patient", label_col="dx", label_map={"IDC": 0, "ILC": 1}
        )
    messages = " ".join(str(w.message) for w in record)
    assert "not in label_map" in messages and "Mixed" in messages and "no 'dx' value" in messages
    assert cohort[["slide_id", "case_id", "label"]].values.tolist() == [
        ["a1", "A", 0],
        ["a2", "A", 0],
        ["b1", "B", 1],
    ]


def test_read_labels_threshold_and_plain_01(tmp_path):
    path = _labels(
        tmp_path,
        pd.DataFrame(
            {
                "slide_id": ["x", "y", "z"],
                "case_id": ["X", "Y", "Z"],
                "hrd_score": [12, 42, 57.5],
                "label": [0, 1, 1],
            }
        ),
    )
    cohort = read_labels(path, label_col="hrd_score", threshold=42)
    assert cohort["label"].tolist() == [0, 1, 1]
    assert read_labels(path)["label"].tolist() == [0, 1, 1]
    assert read_labels(path, label_map={0: 0, 1: 1})["label"].tolist() == [0, 1, 1]
    strings = _labels(
        tmp_path,
        pd.DataFrame({"slide_id": ["x", "y"], "case_id": ["X", "Y"], "label": ["IDC", "ILC"]}),
        "s.csv",
    )
    with pytest.raises(InputError, match="give task.label_map"):
        read_labels(strings)


def test_missing_label_column_is_a_clear_error(tmp_path):
    path = _labels(tmp_path, pd.DataFrame({"slide_id": ["x"], "case_id": ["X"], "diagnosis": ["IDC"]}))
    with pytest.raises(InputError, match=r"labels.csv: no column\(s\) \['label'\].*diagnosis"):
        read_labels(path, label_map={"IDC": 0, "ILC": 1})
    with pytest.raises(InputError, match="no labels file"):
        read_labels(tmp_path / "absent.csv")


def test_label_map_must_be_binary(tmp_path):
    path = _labels(tmp_path, pd.DataFrame({"slide_id": ["x"], "case_id": ["X"], "label": ["IDC"]}))
    with pytest.raises(ConfigError, match="task.label_map must map onto 0..k-1 with k >= 2 classes"):
        read_labels(path, label_map={"IDC": 0, "ILC": 2})
