"""Many encoders in one pass (issue 13): every bag set on the same tiles, rows aligned; zoomldm=false."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import torch

from zoomfeat.bags import bag_path, open_bag, patches_path
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.pipeline import Extractor

#: the CMU slide at min_tissue 0.75: 25 kept 20x tiles under 5 parents (tests/test_extract.py)
CMU = {"model": "tiny", "encoder": "tiny", "tissue.min_tissue": 0.75, "progress": False, "num_workers": 0}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_a_multi_encoder_pass_on_the_cmu_slide_writes_every_set_on_the_same_rows(cmu_slide, tmp_path):
    """encoders=[tiny, ctranspath] (Swin-T, seeded random weights) next to ZoomLDM's default recipe:
    nine bag sets whose rows are the same tiles, and each encoder's embeddings are those of the
    encoder run on the slide's own tiles.

    Tolerance of that last comparison: with batch_size 17 every batch is one parent's 17 tiles in
    both computations, so the same kernels see the same inputs; we allow 4 ulp of the largest
    embedding (4 * 2^-23 * max|e|) for any reassociation a kernel may still choose.
    """
    from zoomfeat.encoders import build_encoder
    from zoomfeat.slide import Slide, TileGrid, split_parent

    cfg = ExtractConfig.from_kwargs(
        **CMU, batch_size=17, encoders=["tiny", "ctranspath"], allow_random_weights=True
    )
    ex = Extractor(cfg)
    assert list(ex.families) == ["zoomldm", "tiny", "ctranspath"]
    # the conditioning reuses the tiny family's embeddings: one embedding job per encoder
    assert ex.models.jobs == ["tiny", "ctranspath"] and ex.models.cond_job(224) == "tiny"
    result = _quiet(ex.extract, cmu_slide, tmp_path)
    assert result.status == "done" and (result.n20, result.n5) == (25, 5), result.line()

    sid = cmu_slide.stem
    with h5py.File(patches_path(tmp_path, sid, 20)) as f:
        coords20 = f["coords"][()]
    with h5py.File(patches_path(tmp_path, sid, 5)) as f:
        coords5 = f["coords"][()]
    assert coords20.shape == (25, 2) and coords5.shape == (5, 2)
    bags = {}
    for fam in ex.families:
        b20, b5, bf = (open_bag(bag_path(tmp_path, f"{fam}_{s}", sid)) for s in ("20x", "5x", "fused"))
        bags[fam] = (b20, b5)
        assert np.array_equal(b20.coords, coords20) and np.array_equal(bf.coords, coords20), fam
        assert np.array_equal(b5.coords, coords5), fam
        assert np.array_equal(b20.parent_idx, bf.parent_idx) and b5.parent_idx is None
        # fused = each 20x row next to its own parent's 5x row, exactly
        assert np.array_equal(
            bf.features, np.concatenate([b20.features, b5.features[b20.parent_idx]], axis=1)
        )
        assert b20.attrs["config_hash"] == ex.families[fam].hash
    assert bags["ctranspath"][0].features.shape == (25, 768) and bags["tiny"][0].features.shape == (25, 32)
    assert (
        bags["ctranspath"][0].attrs["encoder"] == "ctranspath"
        and "timestep" not in bags["ctranspath"][0].attrs
    )
    # parent 0's 17 tiles, read from the slide here, through the encoder built here
    slide = Slide.open(cmu_slide)
    grid = TileGrid.build(
        slide, tile_px=256, mag=20, parent_mag=5, min_tissue=0.75, progress=False, lattice="integer"
    )
    children, parent = split_parent(grid.read_parent(slide, 0))
    kept0 = grid.children.kept[:16]
    tiles = torch.from_numpy(np.concatenate([children, np.asarray(parent)[None]]))
    enc = build_encoder("ctranspath", allow_random_weights=True).eval()
    with torch.inference_mode():
        e = enc(enc.preprocess(tiles)).numpy()
    b20, b5 = bags["ctranspath"]
    atol = 4 * 2.0**-23 * float(np.abs(e).max())
    assert np.abs(b20.features[: kept0.sum()] - e[:16][kept0]).max() <= atol
    assert np.abs(b5.features[0] - e[16]).max() <= atol
    assert np.abs(e[:16][kept0] - e[16]).max() > 1e-3  # the 20x and 5x tiles do differ


def test_zoomldm_false_writes_encoder_bags_only_without_loading_zoomldm(
    reference_run, small_slides, tiny, tmp_path
):
    """zoomldm=false, encoders=null: the conditioning encoder's uni_* family alone, equal to the same
    family of a default run (reference_run, same batch size: the encoder is bitwise reproducible)."""
    ex = Extractor(ExtractConfig.from_kwargs(**tiny, batch_size=3, num_workers=0, zoomldm=False))
    assert ex.models.model is None and ex.models.recipes == [] and list(ex.families) == ["uni"]
    result = _quiet(ex.extract, small_slides / "det_b.svs", tmp_path)
    assert result.status == "done" and result.written == ["uni"]
    assert not list(tmp_path.rglob("features_zoomldm*"))
    for s in ("uni_20x", "uni_5x", "uni_fused"):
        new, ref = open_bag(bag_path(tmp_path, s, "det_b")), open_bag(bag_path(reference_run, s, "det_b"))
        assert np.array_equal(new.features, ref.features) and np.array_equal(new.coords, ref.coords)
        assert new.attrs["config_hash"] == ref.attrs["config_hash"]  # the uni family's hash: no ZoomLDM in it


def test_unknown_encoders_are_refused_listing_the_known_ones():
    from zoomfeat.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown encoder 'vitamin': use one of .*phikon.*uni"):
        ExtractConfig.from_kwargs(encoders=["uni", "vitamin"])
    with pytest.raises(ConfigError, match="listed twice"):
        ExtractConfig.from_kwargs(encoders=["phikon", "phikon"])
    with pytest.raises(ConfigError, match="nothing to extract"):
        ExtractConfig.from_kwargs(encoders=[], zoomldm=False)
    # listing encoders replaces the uni_* default; UNI stays the conditioning encoder
    cfg = ExtractConfig.from_kwargs(encoders=["phikon"])
    assert cfg.encoder_families() == {"phikon": "phikon"} and cfg.encoder.name == "uni"
