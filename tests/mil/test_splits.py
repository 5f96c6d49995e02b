import numpy as np
import pandas as pd
import pytest

from zoomfeat.mil.bagset import BenchWarning
from zoomfeat.mil.splits import fold_keys, fold_parts, load_splits, make_splits, save_splits
from zoomfeat.runtime.errors import InputError


def _cohort(n_cases=60, pos_every=3, seed=0):
    """Patients with 1-3 slides each; a third of them positive."""
    rng = np.random.default_rng(seed)
    slides, cases, labels = [], [], []
    for c in range(n_cases):
        for s in range(int(rng.integers(1, 4))):
            slides.append(f"P{c:03d}-S{s}")
            cases.append(f"P{c:03d}")
            labels.append(int(c % pos_every == 0))
    return slides, cases, labels


def test_patients_never_span_parts_and_every_slide_is_tested_once():
    slides, cases, labels = _cohort()
    splits = make_splits(slides, cases, labels, folds=5, repeats=2, seed=3, val_fraction=0.2)
    assert fold_keys(splits) == [(r, f) for r in range(2) for f in range(5)]
    for (repeat, fold), frame in splits.groupby(["repeat", "fold"]):
        assert sorted(frame["slide_id"]) == sorted(slides)  # every slide in exactly one part
        assert (frame.groupby("case_id")["part"].nunique() == 1).all(), (repeat, fold)
        assert set(frame["part"]) == {"train", "val", "test"}
    for repeat in range(2):
        tests = splits[(splits["repeat"] == repeat) & (splits["part"] == "test")]
        assert sorted(tests["slide_id"]) == sorted(slides)


def test_folds_are_stratified_at_patient_level():
    slides, cases, labels = _cohort(n_cases=100)
    splits = make_splits(slides, cases, labels, folds=5, seed=0)
    per_case = pd.DataFrame({"case_id": cases, "label": labels}).drop_duplicates()
    overall = per_case["label"].mean()
    for fold in range(5):
        test_cases = splits[(splits["fold"] == fold) & (splits["part"] == "test")].drop_duplicates("case_id")
        assert abs(test_cases["label"].mean() - overall) < 0.1, fold
        val_cases = splits[(splits["fold"] == fold) & (splits["part"] == "val")].drop_duplicates("case_id")
        assert 0 < val_cases["label"].mean() < 1  # both classes in validation
        n_val, n_trainval = (
            len(val_cases),
            len(splits[(splits["fold"] == fold) & (splits["part"] != "test")].drop_duplicates("case_id")),
        )
        assert 0.12 < n_val / n_trainval < 0.3


def test_splits_are_reproducible_and_order_independent():
    slides, cases, labels = _cohort()
    a = make_splits(slides, cases, labels, folds=4, seed=7)
    order = np.random.default_rng(0).permutation(len(slides))
    b = make_splits(
        [slides[i] for i in order], [cases[i] for i in order], [labels[i] for i in order], folds=4, seed=7
    )
    key = ["repeat", "fold", "slide_id"]
    pd.testing.assert_frame_equal(
        a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    )
    c = make_splits(slides, cases, labels, folds=4, seed=8)
    assert not a.sort_values(key).reset_index(drop=True).equals(c.sort_values(key).reset_index(drop=True))
    repeats = make_splits(slides, cases, labels, folds=4, repeats=2, seed=7)
    r0 = repeats[repeats["repeat"] == 0].sort_values(["fold", "slide_id"])["part"].tolist()
    r1 = repeats[repeats["repeat"] == 1].sort_values(["fold", "slide_id"])["part"].tolist()
    assert r0 != r1  # repeats reshuffle


def test_saved_splits_reload_identically_and_are_checked(tmp_path):
    slides, cases, labels = _cohort()
    splits = make_splits(slides, cases, labels, folds=3, seed=1)
    path = save_splits(splits, tmp_path / "splits.csv")
    cohort = pd.DataFrame({"slide_id": slides, "case_id": cases, "label": labels})
    again = load_splits(path, cohort)
    pd.testing.assert_frame_equal(
        again.reset_index(drop=True), splits.reset_index(drop=True), check_dtype=False
    )
    assert fold_parts(again, 0, 1) == fold_parts(splits, 0, 1)

    with pytest.raises(InputError, match="not in this task's cohort"):
        load_splits(path, cohort.iloc[5:])
    flipped = cohort.assign(label=1 - cohort["label"])
    with pytest.raises(InputError, match="labels differ"):
        load_splits(path, flipped)
    with pytest.warns(BenchWarning, match="not in .* and are left out"):
        load_splits(
            path, pd.concat([cohort, pd.DataFrame({"slide_id": ["extra"], "case_id": ["X"], "label": [0]})])
        )
    leaky = splits.copy()
    row = leaky.index[(leaky["fold"] == 0) & (leaky["part"] == "test")][0]
    case = leaky.at[row, "case_id"]
    train_row = leaky.index[(leaky["fold"] == 0) & (leaky["part"] == "train")][0]
    leaky.at[train_row, "case_id"] = case
    leaky.to_csv(tmp_path / "leaky.csv", index=False)
    with pytest.raises(InputError, match="patient.*more than one part"):
        load_splits(tmp_path / "leaky.csv")
    with pytest.raises(InputError, match="no split file"):
        load_splits(tmp_path / "absent.csv")


def test_class_with_fewer_patients_than_folds_is_an_error():
    slides = [f"s{i}" for i in range(20)]
    cases = [f"c{i // 2}" for i in range(20)]  # 10 patients
    labels = [1 if i < 6 else 0 for i in range(20)]  # 3 positive patients
    with pytest.raises(
        ValueError, match=r"fewer patients than cross-validation folds \(5\): label 1: 3 patient"
    ):
        make_splits(slides, cases, labels, folds=5)
    make_splits(slides, cases, labels, folds=3)  # fine with 3 folds
    with pytest.raises(InputError, match="only one class"):
        make_splits(slides, cases, [0] * 20, folds=2)
    mixed = list(labels)
    mixed[1] = 0  # patient c0 now has slides with labels 1 and 0
    with pytest.raises(InputError, match="different labels"):
        make_splits(slides, cases, mixed, folds=2)


def test_splits_are_written_atomically(tmp_path):
    slides, cases, labels = _cohort()
    path = save_splits(make_splits(slides, cases, labels, folds=3), tmp_path / "out" / "splits.csv")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["splits.csv"]  # no temp file left
    with pytest.raises(InputError, match="missing column"):
        save_splits(pd.DataFrame({"slide_id": ["a"]}), path)  # refused before anything is written
    assert len(load_splits(path)) == len(make_splits(slides, cases, labels, folds=3))
