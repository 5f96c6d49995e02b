"""zoomfeat.mil.recipes_report: recipes read from bag attributes, AUC per (taps, timestep) with CIs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoomfeat.bags import write_bag
from zoomfeat.mil.recipes_report import read_recipe, recipes_table, write_recipes_heatmap

from .bagfactory import COORDS_ATTRS

#: set -> its bags' recipe attributes (taps as zoomfeat.extract writes them: a JSON list)
SETS = {
    "zoomldm_fused": {"recipe_name": "zoomldm", "timestep": 200, "taps": '["middle_block"]'},
    "zoomldm_20x": {"recipe_name": "zoomldm", "timestep": 200, "taps": '["middle_block"]'},
    "zoomldm-t50-mid-out4_fused": {
        "recipe_name": "zoomldm-t50-mid-out4",
        "timestep": 50,
        "taps": '["middle_block", "output_blocks.4"]',
    },
    "zoomldm-t50-mid_fused": {"recipe_name": "zoomldm-t50-mid", "timestep": 50, "taps": '["middle_block"]'},
    "zoomldm-t200-mid-meanmax_fused": {
        "recipe_name": "zoomldm-t200-mid-meanmax",
        "timestep": 200,
        "taps": '["middle_block"]',
        "pooling": "meanmax",
    },
    # UNI at 256 px: the zoomldm_fused cell's settings otherwise, so a panel of its own
    "zoomldm-t200-mid-c256_fused": {
        "recipe_name": "zoomldm-t200-mid-c256",
        "timestep": 200,
        "taps": '["middle_block"]',
        "cond_px": 256,
    },
    # bags that do not name their family: same cell, so each gets its own panel
    "legacy_a": {"timestep": 300, "taps": '["middle_block"]'},
    "legacy_b": {"timestep": 300, "taps": '["middle_block"]'},
    "uni_fused": {"encoder": "uni"},  # no recipe: not in the heatmap
}
#: test AUC of each set in 4 folds
AUC = {
    "zoomldm_fused": [0.70, 0.80, 0.75, 0.85],
    "zoomldm_20x": [0.60, 0.65, 0.70, 0.75],
    "zoomldm-t50-mid-out4_fused": [0.90, 0.92, 0.88, 0.94],
    "zoomldm-t50-mid_fused": [0.81, 0.83, 0.79, 0.85],
    "zoomldm-t200-mid-meanmax_fused": [0.50, 0.55, 0.60, 0.65],
    "zoomldm-t200-mid-c256_fused": [0.72, 0.78, 0.74, 0.80],
    "legacy_a": [0.7, 0.7, 0.7, 0.7],
    "legacy_b": [0.6, 0.6, 0.6, 0.6],
    "uni_fused": [0.9, 0.9, 0.9, 0.9],
}
T_975_DF3 = 3.182446305284263  # Student t 97.5% quantile, 3 degrees of freedom (4 folds)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe_bags")
    out = {}
    for fs, attrs in SETS.items():
        for slide in ("s1", "s2"):
            x = np.zeros((3, 4), np.float32)
            coords = np.stack([np.arange(3) * 256, np.zeros(3)], 1)
            write_bag(root / f"features_{fs}" / f"{slide}.h5", x, coords, COORDS_ATTRS, attrs=attrs)
        out[fs] = root / f"features_{fs}"
    return out


def _folds() -> pd.DataFrame:
    rows = [
        {"feature_set": fs, "repeat": 0, "fold": f, "auc": v}
        for fs, vals in AUC.items()
        for f, v in enumerate(vals)
    ]
    return pd.DataFrame(rows)


def test_read_recipe_from_bag_attributes(sources, tmp_path):
    rec = read_recipe("zoomldm-t50-mid-out4_fused", sources["zoomldm-t50-mid-out4_fused"])
    assert rec == {
        "recipe_name": "zoomldm-t50-mid-out4",
        "suffix": "fused",
        "timestep": 50,
        "taps": ("middle_block", "output_blocks.4"),
        "pooling": "mean",  # the default when the bags do not say
        "ensemble": 1,
        "cond_px": 224,  # the default when the bags do not say
    }
    assert read_recipe("zoomldm-t200-mid-meanmax_fused", sources["zoomldm-t200-mid-meanmax_fused"])[
        "pooling"
    ] == ("meanmax")
    assert read_recipe("legacy_a", sources["legacy_a"])["suffix"] == ""
    assert read_recipe("uni_fused", sources["uni_fused"]) is None
    assert read_recipe("csv", tmp_path / "bags.csv") is None  # an instance CSV is no recipe
    (tmp_path / "features_empty").mkdir()
    assert read_recipe("empty", tmp_path / "features_empty") is None


def test_table_means_cis_and_choice_counts(sources):
    table = recipes_table(_folds(), sources, {"zoomldm-t50-mid-out4_fused": 3, "zoomldm_fused": 1}, 4)
    assert "uni_fused" not in set(table["feature_set"]) and len(table) == 8
    row = table.set_index("feature_set").loc["zoomldm-t50-mid-out4_fused"]
    vals = np.array(AUC["zoomldm-t50-mid-out4_fused"])
    mean, sd = vals.sum() / 4, math.sqrt(((vals - vals.sum() / 4) ** 2).sum() / 3)
    # float64 sums of 4 numbers <= 1: a few ulp (~1e-16) apart at most; 1e-12 bounds it
    assert row["auc_mean"] == pytest.approx(0.91, abs=1e-12) == pytest.approx(mean, abs=1e-12)
    assert row["auc_ci_low"] == pytest.approx(mean - T_975_DF3 * sd / 2, abs=1e-12)
    assert row["auc_ci_high"] == pytest.approx(mean + T_975_DF3 * sd / 2, abs=1e-12)
    assert (row["n_folds"], row["times_chosen"], row["folds_chosen_from"]) == (4, 3, 4)
    assert row["taps"] == '["middle_block", "output_blocks.4"]' and row["suffix"] == "fused"
    legacy = table.set_index("feature_set").loc[["legacy_a", "legacy_b"], "suffix"].tolist()
    assert legacy == ["legacy_a", "legacy_b"]  # same cell: a panel each
    c256 = table.set_index("feature_set").loc["zoomldm-t200-mid-c256_fused"]
    assert (c256["cond_px"], c256["suffix"]) == (256, "fused")  # not a clash: cond_px tells the cells apart
    panels = table.groupby(["suffix", "pooling", "ensemble", "cond_px"]).ngroups
    assert panels == 6  # fused/mean/224, fused/mean/256, 20x/mean, fused/meanmax, legacy_a, legacy_b


def test_heatmap_files(sources, tmp_path):
    paths = write_recipes_heatmap(
        tmp_path,
        _folds(),
        sources=sources,
        chosen={"zoomldm-t50-mid-out4_fused": 4},
        n_choices=4,
        title="demo",
    )
    csv = pd.read_csv(paths["recipes_heatmap_csv"])
    assert set(csv["feature_set"]) == set(SETS) - {"uni_fused"}
    with Image.open(paths["recipes_heatmap"]) as im:
        assert im.format == "PNG" and im.width > im.height  # six panels: 3 across, 2 down
    assert (
        write_recipes_heatmap(
            tmp_path / "none", _folds(), sources={"uni_fused": sources["uni_fused"]}, chosen={}, n_choices=4
        )
        == {}
    )
    assert not (tmp_path / "none").exists()
