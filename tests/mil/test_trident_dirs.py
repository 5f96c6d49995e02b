"""Issue 10: the bench reads any TRIDENT job directory, for any feature-set name, chosen by glob.

The foreign bags are written the way TRIDENT writes them (trident/IO.py ``save_h5`` as called by
``WSI.extract_patch_features`` in trident/wsi_objects/WSI.py): datasets ``features`` (N, D) and
``coords`` (N, 2) int64, chunked one row at a time, resizable along rows; the ``features``
dataset carries ``name``, ``savetodir`` and ``encoder`` attributes, ``coords`` TRIDENT's
patching attributes (``coords_to_h5``); no file attributes (so no zoomfeat provenance, and no
``complete`` mark). float16 features, as a half-precision encoder run leaves them.
"""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from zoomfeat.mil.benchmark import run_benchmark
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection
from zoomfeat.mil.sources import available_sets, expand_feature_sets
from zoomfeat.runtime.errors import BagError

from .bagfactory import planted_bags, write_bags


def trident_save_h5(path, features, coords, encoder):
    """A feature file as TRIDENT's save_h5 writes it (mode 'w', per-dataset attributes only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {
        "features": {"name": path.stem, "savetodir": str(path.parent), "encoder": encoder},
        "coords": {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                   "target_magnification": 20, "overlap": 0, "name": path.stem,
                   "savetodir": str(path.parent), "level0_width": 8192, "level0_height": 8192},
    }  # fmt: skip
    with h5py.File(path, "w") as f:
        for key, val in {"features": features, "coords": coords}.items():
            d = f.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:],
                                 chunks=(1,) + val.shape[1:], dtype=val.dtype)  # fmt: skip
            d[:] = val
            for k, v in attrs[key].items():
                d.attrs[k] = v


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    """A TRIDENT job dir: zoomfeat's uni_20x/uni_5x next to TRIDENT's conch_v15 (a name zoomfeat never wrote)."""
    root = tmp_path_factory.mktemp("trident_job")
    table, feats = planted_bags(n_cases=16, slides_per_case=1, dim=8, seed=5)
    rng = np.random.default_rng(2)
    write_bags(root / "20x_256px_0px_overlap", "uni_20x", {s: rng.normal(size=x.shape).astype(np.float32) for s, x in feats.items()})  # fmt: skip
    write_bags(root / "5x_256px_0px_overlap", "uni_5x", {s: rng.normal(size=x.shape).astype(np.float32) for s, x in feats.items()})  # fmt: skip
    for slide, x in feats.items():
        coords = np.stack([np.arange(len(x)) * 512, np.zeros(len(x))], 1).astype(np.int64)
        trident_save_h5(root / "20x_256px_0px_overlap" / "features_conch_v15" / f"{slide}.h5",
                        x.astype(np.float16), coords, "conch_v15")  # fmt: skip
    table.to_csv(root / "labels.csv", index=False)
    return root


def test_sets_are_found_by_name_and_glob(job_dir):
    assert available_sets(job_dir) == ["conch_v15", "uni_20x", "uni_5x"]
    assert expand_feature_sets(["uni_*", "conch_v15", "uni_20x"], job_dir) == [
        "uni_20x",
        "uni_5x",
        "conch_v15",
    ]
    with pytest.raises(
        BagError, match=r"'virchow\*' matches no feature set .*found: \['conch_v15', 'uni_20x', 'uni_5x'\]"
    ):
        expand_feature_sets(["virchow*"], job_dir)


def test_bench_compares_trident_and_zoomfeat_bags(job_dir, tmp_path):
    cfg = BenchmarkConfig(
        task=TaskSection(name="mixed", labels=str(job_dir / "labels.csv"), bags=str(job_dir), label_map={"IDC": 0, "ILC": 1}),
        feature_sets=["conch_v15", "uni_*"],
        baseline="uni_20x",
        out_dir=str(tmp_path),
        cv=CVSection(folds=2, val_fraction=0.0),
        mil=MILConfig(hidden=[16], att_dim=8, lr=2e-3, epochs=15, min_epochs=1, warmup=0, amp=False),
        progress=False,
        threads=1,
    )  # fmt: skip
    out = run_benchmark(cfg)["out_dir"]
    folds = pd.read_csv(out / "folds.csv")
    assert list(dict.fromkeys(folds["feature_set"])) == ["conch_v15", "uni_20x", "uni_5x"]
    auc = folds.groupby("feature_set")["auc"].mean()
    # conch_v15 holds the planted signal (key instances shifted by 3 sd), the uni sets pure noise
    assert auc["conch_v15"] > 0.85, auc
    run = json.loads((out / "run.json").read_text())
    assert run["sources"]["conch_v15"].endswith("20x_256px_0px_overlap/features_conch_v15")
    assert run["sources"]["uni_5x"].endswith("5x_256px_0px_overlap/features_uni_5x")
    assert run["provenance"]["conch_v15"]["config_hash"] == "unknown"
    assert set(pd.read_csv(out / "paired.csv")["feature_set"]) == {"conch_v15", "uni_5x"}


def test_a_set_in_two_trident_dirs_is_ambiguous(job_dir, tmp_path):
    import shutil

    shutil.copytree(job_dir, tmp_path / "job")
    shutil.copytree(tmp_path / "job" / "20x_256px_0px_overlap" / "features_conch_v15",
                    tmp_path / "job" / "10x_256px_0px_overlap" / "features_conch_v15")  # fmt: skip
    from zoomfeat.mil.sources import resolve_source

    with pytest.raises(
        BagError, match=r"'conch_v15' is in 2 TRIDENT directories .*10x_256px_0px_overlap, 20x_256px"
    ):
        resolve_source(tmp_path / "job", "conch_v15")
    assert resolve_source(tmp_path / "job" / "10x_256px_0px_overlap", "conch_v15").parent.name.startswith(
        "10x"
    )
