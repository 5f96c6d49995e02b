"""``python -m zoomfeat.extract``: the demo on the real CMU slide, end to end, and what MIL code sees."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.processes import run_entries
from zoomfeat.bags import (
    COORDS_ATTRS,
    FEATURE_SET_MAG,
    FEATURE_SETS,
    bag_path,
    mag_dir,
    open_bag,
    patches_path,
)

REPO = Path(__file__).resolve().parent.parent
MIN_TISSUE = 0.75  # keeps the test at 25 + 5 tiles (the demo's default 0.25 gives 47 + 6)
SLIDE_ID = "CMU-1-Small-Region"
PROVENANCE = ("encoder", "zoomfeat_version", "config_hash", "config", "mpp", "timestep", "taps", "seed",
              "model_checkpoint_id", "model_checkpoint_hash", "encoder_checkpoint_id", "ensemble", "complete")  # fmt: skip


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, cmu_slide) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """The module's command lines, each ``python -m zoomfeat.extract ...`` in a process of its own,
    run once for the module (each its own out_dir, two at a time, forked from one process that imported torch once:
    ``tests.processes.run_entries``): (scratch dir, finished process by name)."""
    t = tmp_path_factory.mktemp("extract_cli")
    commands = {
        "demo": ["demo=true", f"out_dir={t / 'zoomfeat_demo'}", f"tissue.min_tissue={MIN_TISSUE}", "batch_size=16"],
        "full size": [str(cmu_slide), "model=zoomldm_brca", "encoder=uni", f"out_dir={t / 'full_size'}"],
        "unknown key": ["demo=true", f"out_dir={t / 'unknown_key'}", "+features.timestp=3"],
        "missing slide": [str(t / "nope.svs"), f"out_dir={t / 'missing_slide'}"],
        "no slides": [f"out_dir={t / 'no_slides'}"],
    }  # fmt: skip
    finished = run_entries(
        [("zoomfeat.extract", a) for a in commands.values()], cwd=REPO, env=dict(os.environ)
    )
    return t, {name: proc for name, (proc, _) in zip(commands, finished, strict=True)}


@pytest.fixture(scope="module")
def demo_run(cli_runs):
    """``python -m zoomfeat.extract demo=true`` on the built-in CMU slide (one run for the module)."""
    t, procs = cli_runs
    proc = procs["demo"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return t / "zoomfeat_demo", proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def grid(cmu_slide):
    from zoomfeat.slide import Slide, TileGrid

    slide = Slide.open(cmu_slide)
    return slide, TileGrid.build(slide, min_tissue=MIN_TISSUE, progress=False, lattice="integer")


def test_demo_reports_and_writes_six_sets_coords_files_and_a_preview(demo_run):
    out, text = demo_run
    assert f"{SLIDE_ID}: 25 20x + 5 5x tiles" in text and "tiles/s" in text
    assert "1 extracted (30 tiles" in text and "0 failed" in text
    for name in FEATURE_SETS:
        assert bag_path(out, name, SLIDE_ID).is_file(), name
    for mag in (20, 5):
        assert patches_path(out, SLIDE_ID, mag).is_file()
    png = out / "previews" / f"{SLIDE_ID}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    assert not list(out.rglob("*.tmp-*")) and not list(out.rglob("*.lock"))
    assert not (REPO / "outputs").exists()  # Hydra's run dir lives under out_dir


def test_bag_layout_is_trident(demo_run, grid, cmu_slide):
    out, _ = demo_run
    slide, g = grid
    kept = g.children.kept
    dims = {
        "zoomldm_20x": 96,
        "zoomldm_5x": 96,
        "zoomldm_fused": 192,
        "uni_20x": 32,
        "uni_5x": 32,
        "uni_fused": 64,
    }
    for name in FEATURE_SETS:
        path = bag_path(out, name, SLIDE_ID)
        assert path.parent.name == f"features_{name}" and path.parent.parent == mag_dir(
            out, FEATURE_SET_MAG[name]
        )
        with h5py.File(path, "r") as f:
            feats, coords = f["features"], f["coords"]
            n = int(kept.sum()) if FEATURE_SET_MAG[name] == 20 else len(g.parents)
            assert (
                feats.dtype == np.float32 and feats.shape == (n, dims[name]) and feats.chunks[1] == dims[name]
            )
            assert coords.dtype == np.int64 and coords.shape == (n, 2)
            assert set(COORDS_ATTRS) <= set(coords.attrs)
            assert (
                coords.attrs["patch_size"] == 256
                and coords.attrs["target_magnification"] == FEATURE_SET_MAG[name]
            )
            assert coords.attrs["level0_width"] == 2220 and coords.attrs["level0_height"] == 2967
            want = g.children.xy[kept] if FEATURE_SET_MAG[name] == 20 else g.parents
            np.testing.assert_array_equal(coords[()], want)
            assert ("parent_idx" in f) == (FEATURE_SET_MAG[name] == 20)
            if "parent_idx" in f:
                assert f["parent_idx"].dtype == np.int64
                np.testing.assert_array_equal(f["parent_idx"][()], g.children.parent[kept])
            # issue 12: encoder (uni_*) bags carry their own recipe, without ZoomLDM's entries
            recipe_keys = (
                "timestep",
                "taps",
                "seed",
                "model_checkpoint_id",
                "model_checkpoint_hash",
                "ensemble",
            )
            want_attrs = PROVENANCE if name.startswith("zoomldm") else set(PROVENANCE) - set(recipe_keys)
            missing = [k for k in want_attrs if k not in f.attrs]
            assert not missing, f"{name} lacks {missing}"
            assert f.attrs["slide_path"] == str(cmu_slide) and f.attrs["mpp"] == pytest.approx(0.499)
            assert f.attrs["ssl_encoder"] == "tiny"
            if name.startswith("zoomldm"):
                assert f.attrs["model"] == "tiny" and f.attrs["timestep"] == 200
                assert json.loads(f.attrs["taps"]) == ["middle_block", "output_blocks.4"]
            else:
                assert "timestep" not in f.attrs and json.loads(f.attrs["recipe"])["encoder"] == "tiny"
            config = json.loads(f.attrs["config"])
            assert config["tissue"]["min_tissue"] == MIN_TISSUE and config["model"]["name"] == "tiny"


def test_parent_idx_points_at_the_covering_5x_tile_and_fused_is_the_concat(demo_run, grid):
    out, _ = demo_run
    _, g = grid
    for family in ("zoomldm", "uni"):
        b20, b5, fused = (open_bag(bag_path(out, f"{family}_{s}", SLIDE_ID)) for s in ("20x", "5x", "fused"))
        # every 20x tile lies inside its parent's level-0 box
        p = b5.coords[b20.parent_idx]
        size = g.parent_size_level0
        assert ((b20.coords >= p) & (b20.coords < p + size)).all()
        np.testing.assert_array_equal(
            fused.features, np.concatenate([b20.features, b5.features[b20.parent_idx]], axis=1)
        )
        assert np.isfinite(fused.features).all() and np.abs(b20.features).max() > 0.05
        # distinct tiles get distinct features
        assert len(np.unique(b20.features.round(5), axis=0)) == len(b20)
    # the 5x tile is conditioned on its children, not itself: ZoomLDM 20x and 5x features differ
    assert not np.allclose(
        open_bag(bag_path(out, "zoomldm_5x", SLIDE_ID)).features[0],
        open_bag(bag_path(out, "zoomldm_20x", SLIDE_ID)).features[0],
    )


@pytest.mark.parametrize("feature_set", FEATURE_SETS)
def test_torchmil_trident_dataset_reads_the_bags_unchanged(demo_run, tmp_path, feature_set):
    from torchmil.datasets import TridentWSIDataset

    out, _ = demo_run
    labels = tmp_path / "labels.csv"
    labels.write_text(f"slide,label\n{SLIDE_ID}.svs,1\n")
    base = mag_dir(out, FEATURE_SET_MAG[feature_set])
    bag = open_bag(bag_path(out, feature_set, SLIDE_ID))
    ds = TridentWSIDataset(
        base_path=f"{base}/", labels_path=str(labels), feature_extractor=feature_set,
        patch_size=int(bag.coords_attrs["patch_size_level0"]), wsi_name_col="slide", wsi_label_col="label",
        bag_keys=["X", "Y", "adj", "coords"],
    )  # fmt: skip
    assert len(ds) == 1
    item = ds[0]
    np.testing.assert_array_equal(item["X"].numpy(), bag.features)
    assert int(item["Y"]) == 1
    np.testing.assert_array_equal(
        item["coords"].numpy(), (bag.coords / bag.coords_attrs["patch_size_level0"]).astype(int)
    )
    assert item["adj"].shape == (len(bag), len(bag))


def test_zoomfeat_bag_dataset_reads_the_bags(demo_run, tmp_path):
    import zoomfeat

    out, _ = demo_run
    labels = tmp_path / "labels.csv"
    labels.write_text(f"slide_id,label\n{SLIDE_ID},0\n")
    ds = zoomfeat.BagDataset(bag_path(out, "zoomldm_fused", SLIDE_ID).parent, labels)
    item = ds[0]
    assert item["X"].shape == (25, 192) and item["slide_id"] == SLIDE_ID
    features, coords, attrs = zoomfeat.open_bag(bag_path(out, "zoomldm_fused", SLIDE_ID))
    np.testing.assert_array_equal(item["X"].numpy(), features)
    from zoomfeat.features.pipeline import extract_slide

    assert zoomfeat.extract_slide is extract_slide


def test_full_size_without_weights_is_a_clear_error(cli_runs):
    t, procs = cli_runs
    proc = procs["full size"]
    assert proc.returncode == 2  # a user error stopping the run (1: slides failed)
    assert "zoomfeat extract: error: no ZoomLDM weights given" in proc.stderr
    assert "model.checkpoint=" in proc.stderr and "allow_random_weights=true" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((t / "full_size").rglob("*.h5"))


def test_unknown_keys_and_missing_slides_are_one_line_errors(cli_runs):
    """Exit 2 with one line for a key the config does not know or a path that does not exist;
    exit 1 with the usage line when no slides are given at all."""
    t, procs = cli_runs
    proc = procs["unknown key"]
    assert proc.returncode == 2, proc.stderr
    assert "zoomfeat extract: error: extract: unknown setting 'features.timestp'" in proc.stderr
    assert (
        "known keys under features: timestep, taps, ensemble" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    proc = procs["missing slide"]
    assert (
        proc.returncode == 2 and "nope.svs does not exist" in proc.stderr and "Traceback" not in proc.stderr
    )
    proc = procs["no slides"]
    assert proc.returncode == 1 and "no slides given. Usage: python -m zoomfeat.extract" in proc.stderr
    assert not [p for d in ("unknown_key", "missing_slide", "no_slides") for p in (t / d).rglob("*.h5")]


def test_no_slides_names_the_directory_the_formats_and_what_to_do(tmp_path):
    from zoomfeat.extract import no_slides_message

    (tmp_path / "empty").mkdir()
    (tmp_path / "pics" / "sub").mkdir(parents=True)
    (tmp_path / "pics" / "a.jpg").write_bytes(b"")
    msg = no_slides_message([str(tmp_path / "empty"), str(tmp_path / "pics")])
    assert f"directory {tmp_path / 'empty'} (it is empty)" in msg
    assert "files ending .jpg, 1 folder(s) (not searched)" in msg
    assert ".svs .tif .tiff .ndpi" in msg and "manifest CSV with a 'path' column" in msg
