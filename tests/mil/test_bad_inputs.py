"""Issue 11, benchmark side: every bad input is one clear error naming its file, before training.

Damaged bags (truncated; zoomfeat's without its ``complete`` mark), non-finite features, one set
written with two configs, labels problems, and splits the folds cannot make. Bags are real HDF5
files (zoomfeat.bags' writer, or h5py for what that writer never writes), training is real.
"""

import itertools
import json
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest

from zoomfeat.mil.benchmark import run_benchmark
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection
from zoomfeat.runtime.errors import BagError, InputError

from .bagfactory import COORDS_ATTRS, planted_bags

TINY = MILConfig(hidden=[8], att_dim=4, epochs=2, patience=1, min_epochs=1, warmup=0, amp=False)


def recipe_attrs(timestep=200):
    recipe = {"model": "zoomldm", "timestep": timestep, "taps": ["middle_block", "output_blocks.4"]}
    text = json.dumps(recipe, sort_keys=True)
    return {
        "zoomfeat_version": "test",
        "config_hash": f"hash{timestep}",
        "recipe": text,
        "timestep": timestep,
        "taps": json.dumps(recipe["taps"]),
        "model_checkpoint_id": "zoomldm/brca",
        "encoder_checkpoint_id": "uni",
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 one-slide patients (6 per class), bags of a good set written with a recipe."""
    root = tmp_path_factory.mktemp("bad_inputs")
    table, feats = planted_bags(n_cases=12, slides_per_case=1, dim=6, seed=3)
    table["label"] = (table["label"] == "ILC").astype(int)
    labels = root / "labels.csv"
    table.to_csv(labels, index=False)
    return {"root": root, "labels": labels, "table": table, "feats": feats}


def config(cohort, out, feature_sets, labels=None, **cv):
    return BenchmarkConfig(
        task=TaskSection(name="t", labels=str(labels or cohort["labels"]), bags=str(cohort["root"])),
        feature_sets=feature_sets,
        baseline=None,
        out_dir=str(out),
        cv=CVSection(**{"folds": 2, **cv}),
        mil=TINY,
        progress=False,
        save_attention=False,
        threads=1,
    )


def write_set(cohort, name, attrs=None, change=None):
    """``features_{name}/`` with every cohort slide; ``change(slide, path)`` spoils one afterwards."""
    out = cohort["root"] / f"features_{name}"
    from zoomfeat.bags import write_bag

    for k, (slide, x) in enumerate(cohort["feats"].items()):
        a = attrs(k) if callable(attrs) else attrs
        coords = np.stack([np.arange(len(x)) * 512, np.zeros(len(x))], 1)
        write_bag(out / f"{slide}.h5", x, coords, COORDS_ATTRS, attrs=a)
    if change:
        slide = sorted(cohort["feats"])[3]
        change(slide, out / f"{slide}.h5")
    return out, sorted(cohort["feats"])[3]


def truncate(slide, path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what a failed copy leaves


def unmark(slide, path):
    with h5py.File(path, "a") as f:
        del f.attrs["complete"]


def poison(value):
    def change(slide, path):
        with h5py.File(path, "a") as f:
            x = f["features"][()]
            x[1, 2] = value
            f["features"][...] = x

    return change


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("truncated", truncate, "damaged bag"),
        ("unmarked", unmark, "not marked complete"),
        ("nan", poison(np.nan), "1 non-finite feature value(s) (NaN/inf) in 1 of"),
        ("inf", poison(np.inf), "1 non-finite feature value(s) (NaN/inf) in 1 of"),
    ],
)
def test_damaged_or_non_finite_bag_is_named_with_its_set(cohort, tmp_path, name, change, message):
    bag_dir, slide = write_set(cohort, f"bad_{name}", recipe_attrs(), change)
    with pytest.raises(BagError) as err:
        run_benchmark(config(cohort, tmp_path, [f"bad_{name}"]))
    text = str(err.value)
    assert f"feature set 'bad_{name}'" in text and str(bag_dir / f"{slide}.h5") in text and message in text
    assert "\n" not in text and "Input contains" not in text


def test_other_tools_bags_need_no_completeness_mark(cohort, tmp_path):
    write_set(cohort, "foreign", None, unmark)  # no zoomfeat attributes at all
    result = run_benchmark(config(cohort, tmp_path, ["foreign"]))
    run = json.loads((result["out_dir"] / "run.json").read_text())
    assert run["provenance"]["foreign"]["config_hash"] == "unknown"
    assert "foreign: provenance unknown" in (result["out_dir"] / "summary.md").read_text()


def test_nan_in_an_instance_csv_names_the_file(tmp_path):
    rows = [[k % 2, f"b{k}", *np.random.default_rng(k).normal(size=3)] for k in range(8)]
    rows[5][3] = np.nan
    path = tmp_path / "inst.csv"
    pd.DataFrame(rows).to_csv(path, index=False, header=False)
    cfg = BenchmarkConfig(task=TaskSection(name="c", bags=str(path)), feature_sets=["instances"], baseline=None,
                          out_dir=str(tmp_path / "o"), mil=TINY, progress=False)  # fmt: skip
    with pytest.raises(BagError, match=r"'instances': .*inst.csv holds 1 non-finite .* bag\(s\) b5"):
        run_benchmark(cfg)


def test_one_set_with_two_configs_is_refused_listing_the_groups(cohort, tmp_path):
    write_set(cohort, "mixed", lambda k: recipe_attrs(300 if k in (2, 7) else 200))
    with pytest.raises(BagError) as err:
        run_benchmark(config(cohort, tmp_path, ["mixed"]))
    text = str(err.value)
    assert "feature set 'mixed'" in text and "2 different configs" in text
    assert "hash200 -> 10 bag(s)" in text and "hash300 -> 2 bag(s)" in text
    assert "timestep: 200 vs 300" in text


def test_provenance_is_recorded_in_the_report(cohort, tmp_path):
    write_set(cohort, "recipe", recipe_attrs(200))
    out = run_benchmark(config(cohort, tmp_path, ["recipe"]))["out_dir"]
    prov = json.loads((out / "run.json").read_text())["provenance"]["recipe"]
    assert prov["config_hash"] == "hash200" and prov["timestep"] == 200 and prov["bags"] == 12
    assert (
        prov["taps"] == ["middle_block", "output_blocks.4"] and prov["model_checkpoint_id"] == "zoomldm/brca"
    )
    md = (out / "summary.md").read_text()
    assert "recipe: config hash hash200" in md and "timestep 200" in md and "encoder_checkpoint_id uni" in md


def test_labels_problems_name_the_labels_file(cohort, tmp_path):
    write_set(cohort, "plain")
    table = cohort["table"]
    extra = pd.concat([table, pd.DataFrame({"slide_id": ["nobag"], "case_id": ["P"], "label": [1]})])
    extra.to_csv(tmp_path / "extra.csv", index=False)
    with pytest.raises(BagError, match=r"extra\.csv: 1 labelled slide\(s\) have no bag: plain .*nobag"):
        run_benchmark(config(cohort, tmp_path / "a", ["plain"], tmp_path / "extra.csv"))
    mixed = table.copy()
    mixed.loc[1, "case_id"] = mixed.loc[0, "case_id"]  # one patient, slides labelled 0 and 1
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(InputError, match=r"mixed\.csv: 1 patient\(s\) have slides with different labels"):
        run_benchmark(config(cohort, tmp_path / "b", ["plain"], tmp_path / "mixed.csv"))


def test_no_input_passes_the_checks_then_fails_inside_a_library(cohort, tmp_path):
    """(patients per class, folds, val_fraction) grid: refused up front with InputError, or runs.

    2 + 2 one-slide patients with 2 folds is the case that used to pass the folds check and
    fail inside scikit-learn (the validation split of a 1 + 1 training part)."""
    write_set(cohort, "grid")
    table = cohort["table"]
    outcomes = {}
    for n, folds, vf in itertools.product((2, 3), (2, 3), (0.0, 0.5)):
        sub = pd.concat([table[table["label"] == c].head(n) for c in (0, 1)])
        path = tmp_path / f"labels_{n}.csv"
        sub.to_csv(path, index=False)
        cfg = config(cohort, tmp_path / f"o{n}{folds}{vf}", ["grid"], path, folds=folds, val_fraction=vf)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                run_benchmark(cfg)
                outcomes[n, folds, vf] = "ran"
            except InputError as err:  # any other exception fails the test
                assert "\n" not in str(err) and str(path) in str(err)
                outcomes[n, folds, vf] = "validation" if "validation part" in str(err) else "folds"
    assert outcomes[2, 2, 0.5] == "validation"  # 1 + 1 patients per training part
    assert outcomes[2, 2, 0.0] == "ran" and outcomes[3, 2, 0.5] == "ran"
    assert outcomes[2, 3, 0.0] == outcomes[2, 3, 0.5] == "folds"  # a class smaller than the folds
    assert outcomes[3, 3, 0.5] == outcomes[3, 3, 0.0] == "ran"  # 2 + 2 per training part: 2 slides a class
