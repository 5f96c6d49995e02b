"""zoomfeat.features.models: the model calls (ensembles, precision), weights, model/encoder pairing."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from zoomfeat.bags import bag_path, open_bag
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.pipeline import Extractor, extract_slide
from zoomfeat.runtime.errors import ConfigError


def test_ensemble_averages_independent_noise_draws(tiny, reference_run, small_slides, tmp_path, batch_atol):
    from zoomfeat.features.data import NoiseSpec, ParentRegions
    from zoomfeat.slide import Slide, TileGrid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = extract_slide(
            small_slides / "det_b.svs", tmp_path, **tiny, **{"features.ensemble": 2}, batch_size=3
        )
    ens = open_bag(paths["zoomldm_20x"])
    ref = open_bag(bag_path(reference_run, "zoomldm_20x", "det_b"))
    assert ens.attrs["ensemble"] == 2
    assert np.abs(ens.features - ref.features).max() > 1e-3

    # recompute by hand: the 2-draw feature is the mean of the single-draw features
    ex = Extractor(ExtractConfig.from_kwargs(**tiny, **{"features.ensemble": 2}))
    slide = Slide.open(small_slides / "det_b.svs")
    grid = TileGrid.build(slide, min_tissue=tiny["tissue.min_tissue"], progress=False)
    item = ParentRegions(slide, grid, NoiseSpec(0, "det_b", ex.models.latent_shape, 2))[0]
    kept = torch.as_tensor(np.flatnonzero(grid.children.kept[:16]))[:2]  # two tiles are enough here
    imgs = item["children"][kept]
    models = ex.models
    ctx = models.contexts([models.embed(item["children"])[kept][:, :, None, None]], [0])
    noise = item["noise20"][:2]
    both = models.zoomldm_features(imgs, ctx, noise)["zoomldm"]
    one = [dataclasses.replace(models.recipes[0], ensemble=1)]  # the same recipe with one draw
    first = models.zoomldm_features(imgs, ctx, noise[:, :1], one)["zoomldm"]
    second = models.zoomldm_features(imgs, ctx, noise[:, 1:], one)["zoomldm"]
    torch.testing.assert_close(both, (first + second) / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ens.features[:2], both.numpy(), rtol=0, atol=batch_atol)
    # draw 0 of the ensemble stream is the single-draw noise: first == the reference features
    np.testing.assert_allclose(ref.features[:2], first.numpy(), rtol=0, atol=batch_atol)


def test_model_and_encoder_must_agree_and_tap_names_are_checked():
    with pytest.raises(ConfigError, match="32-channel SSL grids but encoder 'uni'"):
        Extractor(model="tiny", encoder="uni", allow_random_weights=True, progress=False)
    with pytest.raises(ValueError, match="unknown tap name"):
        Extractor(model="tiny", encoder="tiny", **{"features.taps": ["middle_block", "output_blocks.99"]})


def test_full_size_needs_weights_or_the_explicit_flag():
    with pytest.raises(ValueError, match="allow_random_weights=true"):
        Extractor(model="zoomldm_brca", encoder="uni", progress=False)


@pytest.mark.slow
def test_full_size_models_extract_a_few_tiles_on_cpu(synthetic_slide_factory, tmp_path):
    """model=zoomldm_brca encoder=uni with seeded random weights: 17 UNI tiles, 2 ZoomLDM tiles."""
    slide = synthetic_slide_factory(
        "fullsize", width=1024, height=1024, mpp=0.5, levels=2, seed=1, tissue_fraction=0.1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = extract_slide(
            slide,
            tmp_path,
            model="zoomldm_brca",
            encoder="uni",
            allow_random_weights=True,
            **{"tissue.min_tissue": 0.25},
            batch_size=8,
            progress=False,
        )
    z20, z5, zf = (open_bag(paths[n]) for n in ("zoomldm_20x", "zoomldm_5x", "zoomldm_fused"))
    u20 = open_bag(paths["uni_20x"])
    # middle_block (960) + output_blocks.4 (576) of the full UNet; UNI ViT-L is 1024-d
    assert (
        z20.features.shape == (1, 1536) and z5.features.shape == (1, 1536) and zf.features.shape == (1, 3072)
    )
    assert u20.features.shape == (1, 1024)
    assert np.isfinite(zf.features).all() and np.abs(z20.features).max() > 0
    assert (
        z20.attrs["model_checkpoint_id"] == "random-init"
        and "random-init" in z20.attrs["encoder_checkpoint_id"]
    )
    np.testing.assert_array_equal(
        zf.features, np.concatenate([z20.features, z5.features[z20.parent_idx]], axis=1)
    )


def test_official_tiny_checkpoint_through_the_pipeline(
    golden_dir, small_slides, tmp_path, tiny, reference_run
):
    """Real weights (the golden official-format tiny checkpoint): provenance names them, the hash changes."""
    ckpt = golden_dir / "zoomldm_tiny.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = extract_slide(small_slides / "det_b.svs", tmp_path, **tiny, **{"model.checkpoint": str(ckpt)})
    bag = open_bag(paths["zoomldm_20x"])
    ref = open_bag(bag_path(reference_run, "zoomldm_20x", "det_b"))
    assert bag.attrs["model_checkpoint_id"] == str(ckpt)
    assert len(bag.attrs["model_checkpoint_hash"]) == 16 and not bag.attrs[
        "model_checkpoint_hash"
    ].startswith("random")
    assert bag.attrs["config_hash"] != ref.attrs["config_hash"]
    assert bag.features.shape == ref.features.shape and np.abs(bag.features - ref.features).max() > 1e-3
    # the UNI sets come from the same tiny encoder: identical rows
    np.testing.assert_array_equal(
        open_bag(paths["uni_20x"]).features, open_bag(bag_path(reference_run, "uni_20x", "det_b")).features
    )


def test_reduced_precision_autocast_is_close_to_fp32_and_changes_the_hash(
    small_slides, tmp_path, tiny, reference_run
):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = extract_slide(small_slides / "det_b.svs", tmp_path, **tiny, precision="bf16")
    for name in ("zoomldm_20x", "uni_5x"):
        bf, ref = open_bag(paths[name]), open_bag(bag_path(reference_run, name, "det_b"))
        assert bf.features.dtype == np.float32 and bf.attrs["precision"] == "bf16"
        assert bf.attrs["config_hash"] != ref.attrs["config_hash"]
        assert 0 < np.abs(bf.features - ref.features).max() < 0.1
        assert np.corrcoef(bf.features.ravel(), ref.features.ravel())[0, 1] > 0.999
