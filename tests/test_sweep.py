"""A recipe sweep end to end (issue 12): ``python -m zoomfeat.extract`` with a 3 x 3 grid of
timesteps x taps on several slides, then ``python -m zoomfeat.bench`` with nested selection.

Both entry points run in-process through their Hydra mains with the command line's own spelling
(``features.sweep.timestep=[50,200,500]``), on real synthetic slides read through openslide, the
tiny ZoomLDM and the tiny encoder (seeded random weights: the numbers show the machinery, not
biology). Slides of class 1 carry more tissue than those of class 0, so the bags differ by class.
"""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from zoomfeat import bench, extract
from zoomfeat.bags import bag_path
from zoomfeat.cli import hydra_main

TIMESTEPS = (50, 200, 500)
TAPS = {"mid": "middle_block", "out2": "output_blocks.2", "out4": "output_blocks.4"}
FAMILIES = [f"zoomldm-t{t}-{a}" for t in TIMESTEPS for a in TAPS]
N_SLIDES = 12


@pytest.fixture(scope="module")
def sweep_run(synthetic_slide_factory, tmp_path_factory):
    """12 small slides (512 px: one 5x parent, up to 4 20x tiles each), extracted once with the 3 x 3 sweep; + labels.csv."""
    slides = []
    for i in range(N_SLIDES):
        label = i % 2
        slides.append(
            synthetic_slide_factory(
                f"sweep_{i:02d}",
                width=512,
                height=512,
                mpp=0.5,
                levels=2,
                seed=100 + i,
                tissue_fraction=0.35 + 0.4 * label,
            )  # fmt: skip
        )
    out = tmp_path_factory.mktemp("sweep_bags")
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = hydra_main(
                "extract",
                extract.run,
                argv=[*map(str, slides), "model=tiny", "encoder=tiny", f"out_dir={out}", "progress=false",
                      "num_workers=0", "batch_size=8", "tissue.min_tissue=0.1",
                      "features.sweep.timestep=[50,200,500]",
                      "features.sweep.taps=[[middle_block],[output_blocks.2],[output_blocks.4]]"],
            )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert summary.ok and all(r.status == "done" for r in summary.results), summary.report()
    labels = pd.DataFrame(
        {
            "case_id": [f"case{i:02d}" for i in range(N_SLIDES)],
            "slide_id": [p.stem for p in slides],
            "label": [("IDC", "ILC")[i % 2] for i in range(N_SLIDES)],
        }
    )
    labels.to_csv(out / "labels.csv", index=False)
    return out, [p.stem for p in slides]


def test_one_extraction_writes_every_recipe_family_with_its_recipe(sweep_run):
    out, slide_ids = sweep_run
    sid = slide_ids[0]
    hashes = set()
    with h5py.File(bag_path(out, "uni_20x", sid), "r") as f:
        coords20 = f["coords"][:]
    for fam, (t, (abbr, tap)) in zip(FAMILIES, [(t, a) for t in TIMESTEPS for a in TAPS.items()]):
        assert fam == f"zoomldm-t{t}-{abbr}"
        for suffix in ("20x", "5x", "fused"):
            with h5py.File(bag_path(out, f"{fam}_{suffix}", sid), "r") as f:
                assert f.attrs["complete"]
                assert int(f.attrs["timestep"]) == t and json.loads(f.attrs["taps"]) == [tap]
                assert f.attrs["recipe_name"] == fam
                hashes.add(f.attrs["config_hash"])
                if suffix != "5x":  # every 20x-based bag has the uni bag's rows
                    np.testing.assert_array_equal(f["coords"][:], coords20)
    assert len(hashes) == 9  # each recipe its own hash, shared by its three sets
    # the default recipe (t=200, [middle_block, output_blocks.4]) keeps today's names
    assert bag_path(out, "zoomldm_fused", sid).is_file()


def test_nested_selection_over_the_sweep(sweep_run, tmp_path):
    out, _ = sweep_run
    res = tmp_path / "bench"
    threads = torch.get_num_threads()
    try:
        hydra_main(
            "bench",
            bench.run,
            argv=["task=brca", f"task.labels={out / 'labels.csv'}", f"task.bags={out}",
                  "feature_sets=[uni_20x]", "selection.candidates=[zoomldm-t*_fused]", "cv.folds=3",
                  "cv.val_fraction=0.34", "mil.hidden=[8]", "mil.att_dim=4", "mil.epochs=3", "mil.min_epochs=1",
                  "progress=false", "threads=1", "save_attention=false", f"out_dir={res}"],
            inputs_key=None,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    sel = pd.read_csv(res / "selection.csv")
    assert len(sel) == 3  # one choice per outer fold
    assert set(sel["chosen"]) <= {f"{f}_fused" for f in FAMILIES}
    summary = pd.read_csv(res / "summary.csv")
    sets = set(summary["feature_set"])
    assert {"uni_20x", "selected", *(f"{f}_fused" for f in FAMILIES)} <= sets
    heat = pd.read_csv(res / "recipes_heatmap.csv")
    assert len(heat) == 9 and set(heat["timestep"]) == set(TIMESTEPS)
    assert heat["times_chosen"].sum() == 3  # the heatmap marks each fold's choice
    assert (res / "recipes_heatmap.png").stat().st_size > 0
    paired = pd.read_csv(res / "paired.csv")
    assert "selected" in set(paired.astype(str).to_numpy().ravel())
