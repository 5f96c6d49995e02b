"""The Python API and the exports read labels and bags through the benchmark's checks.

One labels reader (``zoomfeat.bags.read_labels_table`` + ``labelled_rows`` +
``one_label_per_slide``) and one bag check (``zoomfeat.bags.open_checked_bag``) serve the bench
(``zoomfeat.mil.labels.read_labels``, ``zoomfeat.mil.bagdir``), ``zoomfeat.BagDataset`` and
``python -m zoomfeat.export``: the same file is accepted or refused, with one line, by all.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pandas as pd
import pytest
from mil.bagfactory import write_bags

import zoomfeat
from zoomfeat.cli import hydra_main
from zoomfeat.export import run as export_run
from zoomfeat.mil.labels import read_labels
from zoomfeat.runtime.errors import BagError, InputError

SLIDES = [f"s{i:02d}" for i in range(12)]


@pytest.fixture
def bag_dir(tmp_path):
    """``{tmp}/20x_256px_0px_overlap/features_uni_20x/`` with 12 finished, finite bags."""
    rng = np.random.default_rng(0)
    feats = {s: rng.normal(size=(5, 4)).astype(np.float32) for s in SLIDES}
    return write_bags(tmp_path / "20x_256px_0px_overlap", "uni_20x", feats)


def labels_csv(tmp_path, rows) -> str:
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["slide_id", "case_id", "label"]).to_csv(path, index=False)
    return str(path)


def test_a_slide_listed_with_two_labels_is_refused_by_bench_and_bagdataset(tmp_path, bag_dir):
    rows = [(s, s, i % 2) for i, s in enumerate(SLIDES)] + [("s03", "s03", 0)]  # s03: label 1, then 0
    path = labels_csv(tmp_path, rows)
    message = rf"{path}: slide\(s\) listed with different labels: s03; keep one row per slide"
    with pytest.raises(InputError, match=message):
        read_labels(path)
    with pytest.raises(InputError, match=message):  # was: 13 items, s03 twice
        zoomfeat.BagDataset(bag_dir, path)


def test_spaces_around_ids_are_accepted_by_bench_and_bagdataset(tmp_path, bag_dir):
    path = labels_csv(tmp_path, [(f"  {s} ", s, i % 2) for i, s in enumerate(SLIDES)])
    cohort = read_labels(path)
    ds = zoomfeat.BagDataset(bag_dir, path)  # was: "12 labelled slide(s) have no bag"
    assert ds.slide_ids == cohort["slide_id"].tolist() == SLIDES
    assert [int(ds[i]["Y"]) for i in range(len(ds))] == cohort["label"].tolist()


def test_repeated_rows_and_rows_without_a_label(tmp_path, bag_dir):
    rows = [(s, s, i % 2) for i, s in enumerate(SLIDES)] + [("s01", "s01", 1), ("s05", "s05", None)]
    path = labels_csv(tmp_path, rows[:5] + rows[6:])  # s05 only without a label
    with pytest.warns(UserWarning, match=r"1 row\(s\) have no 'label' value and are left out: s05"):
        ds = zoomfeat.BagDataset(bag_dir, path)
    assert len(ds) == 11 and ds.slide_ids.count("s01") == 1


def poison(path, *, complete: bool) -> None:
    """Turn a finished bag into what a killed fp16 extraction could leave: NaN in a row, and
    (``complete=False``) no completeness mark on a zoomfeat bag."""
    with h5py.File(path, "r+") as f:
        x = f["features"][()]
        x[2, 1] = np.nan
        f["features"][...] = x
        f.attrs["config_hash"] = "abc123"
        if complete:
            f.attrs["complete"] = True
        elif "complete" in f.attrs:
            del f.attrs["complete"]


def test_bagdataset_refuses_a_nan_bag_with_one_line(bag_dir):
    poison(bag_dir / "s04.h5", complete=True)
    with pytest.raises(
        BagError, match=r"bag .*s04.h5 holds 1 non-finite feature value\(s\) \(NaN/inf\) in 1 of 5"
    ):
        zoomfeat.BagDataset(bag_dir, preload=True)
    ds = zoomfeat.BagDataset(bag_dir)  # read on access: refused when read
    assert ds[0]["X"].shape == (5, 4)
    with pytest.raises(BagError, match="s04.h5 holds 1 non-finite"):
        ds[ds.slide_ids.index("s04")]


@pytest.mark.parametrize("to", ["clam", "stamp", "slideflow"])
@pytest.mark.parametrize(
    ("complete", "why"),
    [(False, r"is unfinished \(written by zoomfeat but not marked complete\)"), (True, "holds 1 non-finite")],
)
def test_export_refuses_an_unfinished_or_nan_bag(tmp_path, bag_dir, capsys, to, complete, why):
    poison(bag_dir / "s04.h5", complete=complete)
    dest = tmp_path / "mirror"
    argv = [str(tmp_path), f"to={to}", f"dest={dest}", "mpp=0.5"]
    with pytest.raises(SystemExit) as exit_info:
        hydra_main("export", export_run, argv=argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and err[0].startswith("zoomfeat export: error: export of 'uni_20x': bag "), err
    assert str(bag_dir / "s04.h5") in err[0]
    assert re.search(why, err[0]), err[0]
    assert not list(dest.rglob("s04*"))  # nothing of the refused bag (was: pt_files/s04.pt, NaN and all)


def test_bench_refuses_the_same_bag(tmp_path, bag_dir):
    from zoomfeat.mil.bagdir import read_checked_bag

    poison(bag_dir / "s04.h5", complete=False)
    with pytest.raises(BagError, match=r"feature set 'uni_20x': bag .*s04.h5 is unfinished"):
        read_checked_bag(bag_dir / "s04.h5", "uni_20x")
