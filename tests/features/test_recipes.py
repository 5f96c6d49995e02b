"""Many recipes in one pass (issue 12): config expansion, per-family hashes, equality with single runs, reuse."""

from __future__ import annotations

import json
import shutil
import warnings

import h5py
import numpy as np
import pytest

from zoomfeat.bags import bag_path, open_bag, patches_path, read_attrs
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.pipeline import Extractor
from zoomfeat.features.recipes import Recipe, recipe_dict
from zoomfeat.features.writer import slide_outputs
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.provenance import config_hash

#: three recipes over two timesteps beside the default (t=200, middle_block + output_blocks.4, mean):
#: meanmax pooling at t=200 (shares the default's forward), grid2 pooling of a shallower tap at t=50,
#: and a 2-draw ensemble at t=50 (shares that forward; needs a second noise draw)
EXTRA = [
    {"pooling": "meanmax"},
    {"timestep": 50, "taps": ["output_blocks.2"], "pooling": "grid2"},
    {"timestep": 50, "taps": ["middle_block"], "ensemble": 2, "name": "t50-mid-e2"},
    {"taps": ["middle_block"], "cond_px": 256},  # UNI at the native 256 px tile: its own embedding job
]
NAMES = [
    "zoomldm",
    "zoomldm-t200-mid-out4-meanmax",
    "zoomldm-t50-out2-grid2",
    "t50-mid-e2",
    "zoomldm-t200-mid-c256",
]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------ config
def test_recipes_then_the_sweep_product_with_unset_fields_from_the_top_level():
    cfg = ExtractConfig.from_kwargs(
        **{"features.recipes": [{"pooling": "max"}, {"timestep": 200}],  # the 2nd is the default again
           "features.sweep.timestep": [50, 500], "features.sweep.taps": [["middle_block"], ["output_blocks.2"]],
           "features.ensemble": 2}
    )  # fmt: skip
    recipes = cfg.recipes()
    assert [r.name for r in recipes] == [
        "zoomldm", "zoomldm-t200-mid-out4-max-e2",
        "zoomldm-t50-mid-e2", "zoomldm-t50-out2-e2", "zoomldm-t500-mid-e2", "zoomldm-t500-out2-e2",
    ]  # fmt: skip
    assert recipes[0] == Recipe("zoomldm", 200, ("middle_block", "output_blocks.4"), ensemble=2)
    assert all(r.ensemble == 2 and r.cond_px == 224 for r in recipes)  # unset: the top-level values
    # a sweep point equal to an earlier recipe is that family, not a second one
    cfg = ExtractConfig.from_kwargs(**{"features.sweep.timestep": [200, 50]})
    assert [r.name for r in cfg.recipes()] == ["zoomldm", "zoomldm-t50-mid-out4"]
    # ... silently when unnamed; a name the user gave is not lost without a word
    with pytest.warns(UserWarning, match="recipe 'mine' has the settings of recipe 'zoomldm'"):
        cfg = ExtractConfig.from_kwargs(**{"features.recipes": [{"name": "mine", "timestep": 200}]})
        assert [r.name for r in cfg.recipes()] == ["zoomldm"]
    # the default recipe may be renamed; zoomldm=false extracts no recipe
    assert ExtractConfig.from_kwargs(**{"features.name": "mine"}).recipes()[0].name == "mine"
    assert ExtractConfig.from_kwargs(zoomldm=False).recipes() == []


def test_the_command_line_sweep_syntax():
    """``features.sweep.taps=[[middle_block],[output_blocks.2]]`` as Hydra composes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import zoomfeat.extract  # noqa: F401 - registers the out_dir resolver
    from zoomfeat.runtime.config import load_config
    from zoomfeat.runtime.resources import config_dir

    overrides = ["features.sweep.timestep=[50,200,500]", "features.sweep.taps=[[middle_block],[output_blocks.2]]",
                 "features.recipes=[{pooling: grid2, cond_px: 256}]", "encoders=[uni,phikon]"]  # fmt: skip
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        composed = compose("extract", overrides=overrides)
    cfg = load_config(ExtractConfig, OmegaConf.to_container(composed, resolve=True), "extract")
    names = [r.name for r in cfg.recipes()]
    assert names[:2] == ["zoomldm", "zoomldm-t200-mid-out4-grid2-c256"] and len(names) == 2 + 6
    assert "zoomldm-t500-out2" in names and cfg.encoder_families() == {"uni": "uni", "phikon": "phikon"}


def test_bad_names_and_values_are_refused_in_one_line():
    def refused(match, **kw):
        with pytest.raises(ConfigError, match=match):
            ExtractConfig.from_kwargs(**kw)

    refused(r"name 'x' is used for two different recipes",
            **{"features.recipes": [{"name": "x", "timestep": 5}, {"name": "x", "timestep": 6}]})  # fmt: skip
    refused(r"'zoomldm' is used for two", **{"features.recipes": [{"name": "zoomldm", "timestep": 5}]})
    refused(r"must not end in _20x", **{"features.recipes": [{"name": "a_5x", "timestep": 5}]})
    refused(r"plain name", **{"features.recipes": [{"name": "../up", "timestep": 5}]})
    refused(r"also an encoder's bag family", **{"features.recipes": [{"name": "uni", "timestep": 5}]})
    refused(
        r"also an encoder's bag family", encoders=["phikon"], **{"features.recipes": [{"name": "phikon"}]}
    )
    refused(r"features.recipes\[0\]: pooling must be one of mean, max, meanmax, grid2",
            **{"features.recipes": [{"pooling": "median"}]})  # fmt: skip
    refused(r"unknown recipe key\(s\) \['timestp'\]", **{"features.recipes": [{"timestp": 5}]})
    refused(r"features.sweep .*timestep must lie in \[0, 1000\)", **{"features.sweep.timestep": [1000]})
    refused(r"features.cond_px must be one of 224, 256", **{"features.cond_px": 512})
    refused(r"unknown encoder 'phikonn': use one of .*phikon", encoders=["phikonn"])
    refused(r"need zoomldm=true", zoomldm=False, **{"features.sweep.timestep": [50]})


def test_the_default_familys_hash_is_unchanged_and_other_recipes_hash_their_own_settings():
    base = ExtractConfig().recipe()
    assert config_hash(base) == "ea2061e40f56cb90"  # tests/features/test_config.py pins the same
    with_more = ExtractConfig.from_kwargs(
        **{"features.sweep.timestep": [50], "features.recipes": [{"pooling": "max"}]}
    )
    assert with_more.recipe() == base  # more recipes do not change the default family's dict
    r0, t50, mx = with_more.recipes()[0], with_more.recipes()[2], with_more.recipes()[1]
    assert recipe_dict(base, r0) == base  # pooling / cond_px only enter when not the defaults
    assert recipe_dict(base, t50) == {**base, "timestep": 50}
    assert recipe_dict(base, mx) == {**base, "pooling": "max"}
    # the recipe of a multi-recipe pass hashes like the single run of that recipe
    single = ExtractConfig.from_kwargs(**{"features.pooling": "max", "features.cond_px": 256})
    assert single.recipe() == {**base, "pooling": "max", "cond_px": 256}
    assert recipe_dict(base, Recipe("x", 200, r0.taps, pooling="max", cond_px=256)) == single.recipe()


# ------------------------------------------------------------------------------------ one pass
@pytest.fixture(scope="module")
def multi_run(small_slides, tmp_path_factory):
    """det_b extracted once with the default + EXTRA recipes (tiny model, batch_size 3 as reference_run)."""
    from tests.features.conftest import TINY

    out = tmp_path_factory.mktemp("multi_recipe")
    cfg = ExtractConfig.from_kwargs(**TINY, batch_size=3, num_workers=0, **{"features.recipes": EXTRA})
    ex = Extractor(cfg)
    result = _quiet(ex.extract, small_slides / "det_b.svs", out)
    assert result.status == "done" and result.written == [*NAMES, "uni"], result.line()
    return ex, out


def test_each_recipe_of_a_multi_recipe_pass_equals_its_single_recipe_run(
    multi_run, reference_run, small_slides, tiny, tmp_path
):
    """Every recipe's three sets equal those of a run of that recipe alone (as the default recipe;
    for ``zoomldm`` and ``uni`` that run is ``reference_run``).

    Tolerance: both runs put the same tiles through the same kernels in the same batches (batch_size
    3: the 3 kept children, then the 5x tile), the UNet stopping later does not change an earlier block,
    and draw j of a tile's noise is the same whatever the number of draws. The only freedom left is
    float32 rounding where the kernels' work split may differ between runs; we allow 4 ulp of the
    largest feature (4 * 2^-23 * max|f|, ~1e-6 at |f| ~ 2), far below the differences between
    recipes (> 1e-2, asserted too). Measured: bitwise equal, here and on the CMU slide at
    batch_size 8 (25 + 5 tiles, parents mixed in batches).
    """
    ex, out = multi_run
    for name, fields in zip([*NAMES, "uni"], [{}, *EXTRA, {}]):
        d = reference_run
        if name not in ("zoomldm", "uni"):  # encoders=[]: the single run writes this recipe's bags only
            single_cfg = ExtractConfig.from_kwargs(
                **tiny, batch_size=3, num_workers=0, encoders=[],
                **{f"features.{k}": v for k, v in fields.items() if k != "name"}, **{"features.name": name},
            )  # fmt: skip
            single = Extractor(single_cfg)
            assert single.families[name].hash == ex.families[name].hash  # same recipe, same hash
            assert single.models.recipes == [q for q in ex.models.recipes if q.name == name]
            d = tmp_path / name
            assert _quiet(single.extract, small_slides / "det_b.svs", d).status == "done"
        for s in ("20x", "5x", "fused"):
            a, b = (
                open_bag(bag_path(out, f"{name}_{s}", "det_b")),
                open_bag(bag_path(d, f"{name}_{s}", "det_b")),
            )
            atol = 4 * 2.0**-23 * float(np.abs(b.features).max())
            assert a.features.shape == b.features.shape and np.array_equal(a.coords, b.coords)
            assert np.abs(a.features - b.features).max() <= atol, (name, s)
            assert a.attrs["config_hash"] == b.attrs["config_hash"] == ex.families[name].hash
    # the recipes do differ (the comparison above could not pass by accident)
    f = {n: open_bag(bag_path(out, f"{n}_20x", "det_b")).features for n in NAMES}
    # cond_px 256 runs the conditioning encoder a second time, on the unresized tile (job cond@256),
    # while cond_px 224 reuses the uni family's embeddings; the conditioning changes the features
    # (weakly in the random tiny model: measured 4.9e-4; 1e-5 is ~100 ulp at |f| ~ 1, far above rounding)
    assert ex.models.jobs == ["uni", "cond@256"] and ex.models.cond_job(224) == "uni"
    c1 = ex.models.tap_dims["middle_block"]
    assert np.abs(f["zoomldm-t200-mid-c256"] - f["zoomldm"][:, :c1]).max() > 1e-5
    # meanmax = per tap [mean, max]: its mean parts are the default recipe's features (one forward)
    c1, c2 = ex.models.tap_dims["middle_block"], ex.models.tap_dims["output_blocks.4"]
    mm, mean = f["zoomldm-t200-mid-out4-meanmax"], f["zoomldm"]
    assert mm.shape[1] == 2 * (c1 + c2) and np.array_equal(mm[:, :c1], mean[:, :c1])
    assert np.array_equal(mm[:, 2 * c1 : 2 * c1 + c2], mean[:, c1:])
    assert np.abs(mm[:, c1 : 2 * c1] - mean[:, :c1]).max() > 1e-2  # max is not mean
    assert np.abs(f["t50-mid-e2"] - mean[:, :c1]).max() > 1e-2  # another timestep, two draws


def test_recipe_bags_carry_their_recipe_for_the_benchmark(multi_run):
    ex, out = multi_run
    a = open_bag(bag_path(out, "zoomldm-t50-out2-grid2_fused", "det_b")).attrs
    assert (a["timestep"], json.loads(a["taps"]), a["pooling"], a["ensemble"], a["cond_px"], a["recipe_name"]) == (
        50, ["output_blocks.2"], "grid2", 1, 224, "zoomldm-t50-out2-grid2")  # fmt: skip
    assert json.loads(a["recipe"]) == ex.families["zoomldm-t50-out2-grid2"].spec
    assert json.loads(a["split"]) == [4 * 64, 4 * 64]  # grid2: 4 quadrants x 64 channels of output_blocks.2
    assert open_bag(bag_path(out, "t50-mid-e2_20x", "det_b")).attrs["ensemble"] == 2
    u = open_bag(bag_path(out, "uni_20x", "det_b")).attrs
    assert "timestep" not in u and json.loads(u["recipe"])["encoder"] == "tiny"  # an encoder bag: no recipe
    grid = read_attrs(patches_path(out, "det_b", 20))
    assert grid["grid_hash"] == ex.grid_hash and json.loads(grid["grid"])["lattice"] == "integer"


def test_adding_a_recipe_computes_only_it_and_leaves_every_existing_file_untouched(
    reference_run, small_slides, tiny, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    old = {name: (p.stat().st_mtime_ns, p.read_bytes()) for name, p in slide_outputs(out, "det_b").items()}
    ex = Extractor(
        ExtractConfig.from_kwargs(**tiny, batch_size=3, **{"features.recipes": [{"timestep": 50}]})
    )
    calls = []
    real = ex.models.latent_features  # the UNet part of zoomldm_features (the executor calls it)

    def spy(*args, recipes=None, **kwargs):  # records what the pass asked ZoomLDM for, computes it for real
        calls.append([r.name for r in recipes])
        return real(*args, recipes=recipes, **kwargs)

    ex.models.latent_features = spy
    result = _quiet(ex.extract, small_slides / "det_b.svs", out)
    assert result.status == "done" and result.written == ["zoomldm-t50-mid-out4"]
    assert result.reused == ["zoomldm", "uni"] and calls and all(c == ["zoomldm-t50-mid-out4"] for c in calls)
    # the default family's and the UNI family's bags and both coords files: byte-identical, same mtime
    assert {
        name: (p.stat().st_mtime_ns, p.read_bytes()) for name, p in slide_outputs(out, "det_b").items()
    } == old
    new = open_bag(bag_path(out, "zoomldm-t50-mid-out4_20x", "det_b"))
    assert new.attrs["config_hash"] == ex.families["zoomldm-t50-mid-out4"].hash != ex.config_hash
    assert np.array_equal(new.coords, open_bag(bag_path(out, "zoomldm_20x", "det_b")).coords)
    # everything is complete now: a rerun skips the slide
    assert _quiet(ex.extract, small_slides / "det_b.svs", out).status == "skipped"


def test_uni_bags_of_the_previous_version_are_recomputed_when_their_recipe_agrees(
    reference_run, small_slides, tiny, tmp_path, batch_atol
):
    """A uni_* bag written before issue 12 stores the full recipe and its hash (the default family's).
    When that recipe agrees on the encoder keys, the family is recomputed without complaint (kept, it
    would leave one set with two hashes, which the benchmark refuses); when it does not, it is refused."""
    from zoomfeat.features.recipes import ENCODER_RECIPE_KEYS

    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    ex = Extractor(ExtractConfig.from_kwargs(**tiny, batch_size=3))
    full = ex.families["zoomldm"].spec  # what the previous version stored in every bag, uni_* too
    assert set(ENCODER_RECIPE_KEYS) <= set(full)
    paths = [bag_path(out, f"uni_{s}", "det_b") for s in ("20x", "5x", "fused")]
    old = [open_bag(p).features for p in paths]
    for p in paths:
        with h5py.File(p, "a") as f:  # a file of bag format 0 (no format_version), before issue 12
            f.attrs["config_hash"], f.attrs["recipe"] = ex.config_hash, json.dumps(full)
            del f.attrs["format_version"]
    assert ex.output_state(out, "det_b")[0] == "partial"  # no mismatch: nothing to refuse
    result = _quiet(ex.extract, small_slides / "det_b.svs", out)
    assert result.status == "done" and result.written == ["uni"] and result.reused == ["zoomldm"]
    for p, before in zip(paths, old):  # the same encoder on the same tiles (conftest's batch_atol)
        bag = open_bag(p)
        assert bag.attrs["config_hash"] == ex.families["uni"].hash
        np.testing.assert_allclose(bag.features, before, rtol=0, atol=batch_atol)
    # one set, one hash (the benchmark refuses a set whose bags mix configs): det_a's and det_b's agree
    hashes = {open_bag(bag_path(out, "uni_20x", sid)).attrs["config_hash"] for sid in ("det_a", "det_b")}
    assert hashes == {ex.families["uni"].hash}
    with h5py.File(paths[0], "a") as f:  # an old bag of another tissue threshold
        f.attrs["config_hash"], f.attrs["recipe"] = "0" * 16, json.dumps({**full, "min_tissue": 0.25})
    state, detail = ex.output_state(out, "det_b")
    assert state == "mismatch" and detail == "uni: min_tissue: 0.25 -> 0.5"


def test_a_missing_coords_file_is_rewritten_alone(reference_run, small_slides, tiny, tmp_path):
    """Every family complete but patches_5x deleted: the rerun writes that coords file only (equal to
    the old one), no model runs and no bag is touched."""
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    gone = patches_path(out, "det_b", 5)
    before = gone.read_bytes()
    gone.unlink()
    bags = {n: p.stat().st_mtime_ns for n, p in slide_outputs(out, "det_b", coords=False).items()}
    ex = Extractor(ExtractConfig.from_kwargs(**tiny))
    result = _quiet(ex.extract, small_slides / "det_b.svs", out)
    assert result.status == "done" and result.written == [] and ex.timings.get("zoomldm", 0.0) == 0.0
    assert {n: p.stat().st_mtime_ns for n, p in slide_outputs(out, "det_b", coords=False).items()} == bags
    with h5py.File(gone) as f, h5py.File(patches_path(reference_run, "det_b", 5)) as g:
        assert np.array_equal(f["coords"][()], g["coords"][()]) and f.attrs["grid_hash"] == ex.grid_hash
    assert len(before) > 0 and ex.output_state(out, "det_b") == ("complete", "")
