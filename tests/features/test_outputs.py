"""zoomfeat.features.outputs: existing bags are reused, refused (with the recipe diff) or completed."""

from __future__ import annotations

import json

import numpy as np

from zoomfeat.bags import write_bag, write_patches
from zoomfeat.features.outputs import inspect_files, read_output, recipe_diff, set_attrs
from zoomfeat.features.writer import slide_outputs

COORDS = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40.0, "target_magnification": 20,
          "overlap": 0, "name": "s", "level0_width": 1024, "level0_height": 1024}  # fmt: skip
RECIPE = {"timestep": 200, "taps": ["middle_block"], "seed": 0}


def _write(path, config_hash, recipe=RECIPE):
    # coords files carry the grid's hash (grid_hash), bags their family's (config_hash)
    attrs = {"config_hash": config_hash, "grid_hash": config_hash, "recipe": json.dumps(recipe)}
    if path.name.endswith("_patches.h5"):
        write_patches(path, np.zeros((1, 2)), COORDS, attrs)
    else:
        write_bag(path, np.ones((1, 4)), np.zeros((1, 2)), COORDS, attrs=attrs)


def test_states_of_a_group_of_output_files(tmp_path):
    paths = slide_outputs(tmp_path, "s")

    def state(h):
        files = {}
        for name, p in paths.items():
            kind = "coords" if name.startswith("patches") else "recipe"
            files[name] = (p, read_output(p, kind=kind) if p.exists() else None)
        return inspect_files(files, h)

    assert state("h1").state == "absent"
    names = list(paths)
    _write(paths[names[0]], "h1")
    assert state("h1").state == "partial"
    for name in names[1:]:
        _write(paths[name], "h1")
    st = state("h1")
    assert (
        st.state == "complete" and set(st.attrs) == set(names) and st.attrs[names[0]]["config_hash"] == "h1"
    )
    assert state("h2").state == "mismatch"  # the detail is recipe_diff's (below)
    paths[names[1]].write_bytes(b"not hdf5")  # unreadable: damaged, named, recomputed
    st = state("h1")
    assert st.state == "damaged" and str(paths[names[1]]) in st.detail and "cannot be read" in st.detail
    assert [p for p, _ in st.damaged] == [paths[names[1]]]


def test_recipe_diff_names_each_changed_key_or_the_foreign_writer():
    old = {"recipe": json.dumps(RECIPE), "config_hash": "h1"}
    assert (
        recipe_diff(old, "h2", {**RECIPE, "seed": 1, "taps": ["a"]})
        == "seed: 0 -> 1; taps: ['middle_block'] -> ['a']"
    )
    assert "another tool or version (config hash x vs h2)" in recipe_diff({"config_hash": "x"}, "h2", RECIPE)


def test_fused_sets_record_their_split():
    from zoomfeat.features.families import Family
    from zoomfeat.features.recipes import Recipe

    r = Recipe("zoomldm-t50-out2-grid2", 50, ("output_blocks.2",), pooling="grid2")
    fams = [Family("zoomldm", "recipe", {}, "h", recipe=Recipe("zoomldm", 200, ("middle_block",))),
            Family("uni", "encoder", {}, "h", encoder="tiny"), Family(r.name, "recipe", {}, "h", recipe=r)]  # fmt: skip
    dims = {
        "zoomldm_20x": 96,
        "zoomldm_5x": 96,
        "uni_20x": 32,
        "uni_5x": 32,
        f"{r.name}_20x": 256,
        f"{r.name}_5x": 256,
    }
    attrs = {k: v for f in fams for k, v in set_attrs(f, dims, "tiny").items()}
    assert (
        json.loads(attrs["zoomldm_fused"]["split"]) == [96, 96]
        and attrs["uni_5x"]["target_magnification"] == 5
        and attrs["uni_20x"]["encoder"] == "tiny"
        and json.loads(attrs[f"{r.name}_fused"]["split"]) == [256, 256]
        and attrs[f"{r.name}_fused"]["target_magnification"] == 20
    )


def test_files_carry_a_format_version_and_format_0_is_read_by_one_function(tmp_path):
    """Files written today carry format_version 1. Format 0 (no format_version) is read by
    read_output alone: a coords file of the version before grid_hash gets the grid_hash of its
    stored recipe's tiling keys; an encoder bag storing a full ZoomLDM recipe gets the hash of its
    encoder keys and is stale (recomputed, never kept); a file of a newer format is foreign."""
    import h5py

    from zoomfeat.bags import FORMAT_VERSION, read_attrs
    from zoomfeat.features.recipes import ENCODER_RECIPE_KEYS, GRID_RECIPE_KEYS
    from zoomfeat.runtime.provenance import config_hash

    full = {"encoder": "tiny", "encoder_checkpoint": "abc", "tile_px": 256, "mag": 20.0, "parent_mag": 5.0,
            "min_tissue": 0.5, "mpp": None, "precision": "fp32", "lattice": "integer", "timestep": 200,
            "taps": ["middle_block"], "seed": 0}  # fmt: skip
    paths = slide_outputs(tmp_path, "s")
    coords, bag = paths["patches_20x"], paths["uni_20x"]
    _write(coords, "ignored", recipe=full)
    _write(bag, "0" * 16, recipe=full)
    assert read_attrs(coords)["format_version"] == read_attrs(bag)["format_version"] == FORMAT_VERSION == 1
    assert read_output(coords, kind="coords").content_hash == "ignored"  # format 1: the stored grid_hash
    for p in (coords, bag):  # as the version before issue 12 wrote them: no format_version, no grid_hash
        with h5py.File(p, "a") as f:
            del f.attrs["format_version"], f.attrs["grid_hash"]
    grid = {k: full[k] for k in GRID_RECIPE_KEYS}
    c = read_output(coords, kind="coords")
    assert c.content_hash == config_hash(grid) and json.loads(c.attrs["grid"]) == grid and not c.stale
    b = read_output(bag, kind="encoder")
    assert b.content_hash == config_hash({k: full[k] for k in ENCODER_RECIPE_KEYS}) and b.stale
    assert read_output(bag, kind="recipe").content_hash == "0" * 16  # a recipe bag's hash is its own
    state = inspect_files({"uni_20x": (bag, b)}, b.content_hash)
    assert state.state == "outdated"  # same settings, older format: recomputed, not kept
    with h5py.File(bag, "a") as f:
        f.attrs["format_version"] = 2
    newer = read_output(bag, kind="encoder")
    assert "newer zoomfeat (bag format_version 2" in newer.foreign
    assert inspect_files({"uni_20x": (bag, newer)}, b.content_hash).state == "mismatch"  # never overwritten
