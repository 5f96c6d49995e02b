"""zoomfeat.features.pipeline: determinism, config safety, locks, empty slides, ensembles, full size."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from zoomfeat.bags import FEATURE_SETS, bag_path, open_bag, patches_path
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.locks import SlideLock
from zoomfeat.features.pipeline import ConfigMismatchError, Extractor, extract_slide

# Across *batch sizes* the ZoomLDM features agree to float32 rounding, not bitwise: oneDNN picks
# convolution blocking by batch size (even single-threaded), so the VQ encoder's and UNet's sums
# are reassociated differently. Measured: at most 7e-7 absolute on features of magnitude ~1.3
# (a few ulps carried through ~40 layers). UNI (matmul/attention only) is bitwise equal, and so
# is everything across worker counts and shards at the same batch size (test_runner.py).
BATCH_ATOL = 1e-5


def _bags(out, slide_id):
    return {name: open_bag(bag_path(out, name, slide_id)) for name in FEATURE_SETS}


def test_batch_size_and_workers_do_not_change_features(tiny, reference_run, small_slides, tmp_path):
    ex = Extractor(ExtractConfig(**tiny, batch_size=16, num_workers=2))
    for slide in sorted(small_slides.iterdir()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = ex.extract(slide, tmp_path)
        assert result.status == "done"
        ref, new = _bags(reference_run, slide.stem), _bags(tmp_path, slide.stem)
        for name in FEATURE_SETS:
            a, b = ref[name], new[name]
            assert a.features.shape == b.features.shape and len(a) > 0
            np.testing.assert_array_equal(a.coords, b.coords)
            if name.startswith("uni"):
                np.testing.assert_array_equal(a.features, b.features, err_msg=name)
            else:
                np.testing.assert_allclose(a.features, b.features, rtol=0, atol=BATCH_ATOL, err_msg=name)
                assert np.abs(a.features).max() > 0.1  # real features, not zeros
        np.testing.assert_array_equal(ref["zoomldm_20x"].parent_idx, new["zoomldm_20x"].parent_idx)


def test_complete_bags_are_skipped_and_a_changed_config_is_not_reused(
    tiny, reference_run, small_slides, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    slide = small_slides / "det_b.svs"
    zpath = bag_path(out, "zoomldm_20x", "det_b")
    before = zpath.stat().st_mtime_ns

    same = Extractor(ExtractConfig(**tiny, batch_size=8))  # batch size is not part of the recipe
    result = same.extract(slide, out)
    assert result.status == "skipped" and zpath.stat().st_mtime_ns == before

    other = Extractor(ExtractConfig(**tiny, timestep=300))
    assert other.config_hash != same.config_hash
    with pytest.raises(ConfigMismatchError, match=r"timestep: 200 -> 300.*overwrite=true"):
        other.extract(slide, out)
    assert zpath.stat().st_mtime_ns == before  # nothing touched
    with pytest.raises(ConfigMismatchError, match="timestep"):
        extract_slide(slide, out, **{**tiny, "features.timestep": 300})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = extract_slide(slide, out, **tiny, timestep=300, overwrite=True)
    new = open_bag(paths["zoomldm_20x"])
    old = open_bag(bag_path(reference_run, "zoomldm_20x", "det_b"))
    assert new.attrs["timestep"] == 300 and new.attrs["config_hash"] == other.config_hash
    assert np.abs(new.features - old.features).max() > 1e-3  # recomputed, not reused
    # the UNI sets do not depend on the timestep but are rewritten under the new hash too
    assert open_bag(paths["uni_20x"]).attrs["config_hash"] == other.config_hash
    # a killed overwrite run resumes: bags already complete with the new config are kept
    stamp = paths["zoomldm_20x"].stat().st_mtime_ns
    again = Extractor(ExtractConfig(**tiny, timestep=300, overwrite=True)).extract(slide, out)
    assert again.status == "skipped" and paths["zoomldm_20x"].stat().st_mtime_ns == stamp


def test_a_held_lock_leaves_the_slide_to_its_owner(tiny, small_slides, tmp_path):
    ex = Extractor(ExtractConfig(**tiny))
    lock = SlideLock(tmp_path, "det_b")
    assert lock.acquire()
    try:
        assert not SlideLock(tmp_path, "det_b").acquire()  # a second holder is refused
        result = ex.extract(small_slides / "det_b.svs", tmp_path)
        assert result.status == "locked"
        assert not bag_path(tmp_path, "zoomldm_20x", "det_b").exists()
        with pytest.raises(BlockingIOError, match="another process"):
            extract_slide(small_slides / "det_b.svs", tmp_path, **tiny)
    finally:
        lock.release()
    assert not lock.path.exists()
    assert SlideLock(tmp_path, "det_b").acquire()


def test_slide_without_tissue_gives_empty_bags(tiny, synthetic_slide_factory, tmp_path):
    blank = synthetic_slide_factory("blank", width=1024, height=1024, mpp=0.5, levels=2, tissue_fraction=0.0)
    with pytest.warns(UserWarning, match="no tissue"):
        paths = extract_slide(blank, tmp_path, **tiny)
    dims = {
        "zoomldm_20x": 96,
        "zoomldm_5x": 96,
        "zoomldm_fused": 192,
        "uni_20x": 32,
        "uni_5x": 32,
        "uni_fused": 64,
    }
    for name, d in dims.items():
        bag = open_bag(paths[name])
        assert bag.features.shape == (0, d) and bag.coords.shape == (0, 2), name
        assert bag.attrs["complete"] is True or bag.attrs["complete"] == 1
    assert open_bag(paths["zoomldm_20x"]).parent_idx.shape == (0,)
    for mag in (20, 5):
        assert patches_path(tmp_path, "blank", mag).is_file()


def test_ensemble_averages_independent_noise_draws(tiny, reference_run, small_slides, tmp_path):
    from zoomfeat.features.data import NoiseSpec, ParentRegions
    from zoomfeat.slide import Slide, TileGrid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = extract_slide(small_slides / "det_b.svs", tmp_path, **tiny, ensemble=2, batch_size=3)
    ens = open_bag(paths["zoomldm_20x"])
    ref = open_bag(bag_path(reference_run, "zoomldm_20x", "det_b"))
    assert ens.attrs["ensemble"] == 2
    assert np.abs(ens.features - ref.features).max() > 1e-3

    # recompute by hand: the 2-draw feature is the mean of the single-draw features
    ex = Extractor(ExtractConfig(**tiny, ensemble=2))
    slide = Slide.open(small_slides / "det_b.svs")
    grid = TileGrid.build(slide, min_tissue=tiny["min_tissue"], progress=False)
    item = ParentRegions(slide, grid, NoiseSpec(0, "det_b", ex.latent_shape, 2))[0]
    kept = torch.as_tensor(np.flatnonzero(grid.children.kept[:16]))[:2]  # two tiles are enough here
    imgs = item["children"][kept]
    ctx = ex.contexts([ex.embed(item["children"])[kept][:, :, None, None]], [0])
    noise = item["noise20"][:2]
    both = ex.zoomldm_features(imgs, ctx, noise)
    first = ex.zoomldm_features(imgs, ctx, noise[:, :1])
    second = ex.zoomldm_features(imgs, ctx, noise[:, 1:])
    torch.testing.assert_close(both, (first + second) / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ens.features[:2], both.numpy(), rtol=0, atol=BATCH_ATOL)
    # draw 0 of the ensemble stream is the single-draw noise: first == the reference features
    np.testing.assert_allclose(ref.features[:2], first.numpy(), rtol=0, atol=BATCH_ATOL)


def test_model_and_encoder_must_agree_and_bad_settings_are_clear():
    with pytest.raises(ValueError, match="32-channel SSL grids but encoder 'uni'"):
        Extractor(ExtractConfig(model="tiny", encoder="uni", allow_random_weights=True, progress=False))
    with pytest.raises(ValueError, match="unknown tap name"):
        Extractor(ExtractConfig(model="tiny", encoder="tiny", taps=("middle_block", "output_blocks.99")))
    with pytest.raises(ValueError, match="precision"):
        ExtractConfig(precision="fp8")
    with pytest.raises(TypeError, match="unknown extraction setting 'timestp'"):
        ExtractConfig.from_kwargs(timestp=3)


def test_full_size_needs_weights_or_the_explicit_flag():
    with pytest.raises(ValueError, match="allow_random_weights=true"):
        Extractor(ExtractConfig(model="zoomldm_brca", encoder="uni", progress=False))


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
            min_tissue=0.25,
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
        paths = extract_slide(small_slides / "det_b.svs", tmp_path, **tiny, model_checkpoint=str(ckpt))
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
