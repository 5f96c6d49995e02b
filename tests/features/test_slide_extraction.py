"""zoomfeat.features.slide_extraction: determinism across batching, the existing-bags/lock step, empty slides."""

from __future__ import annotations

import warnings

import numpy as np
import psutil
import pytest

from zoomfeat.bags import FEATURE_SETS, bag_path, open_bag, patches_path
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.locks import SlideLock
from zoomfeat.features.pipeline import Extractor, extract_slide


def _bags(out, slide_id):
    return {name: open_bag(bag_path(out, name, slide_id)) for name in FEATURE_SETS}


def test_batch_size_and_workers_do_not_change_features(
    tiny, reference_run, small_slides, tmp_path, batch_atol
):
    before = {p.pid for p in psutil.Process().children()}  # a session's servers, say
    ex = Extractor(ExtractConfig.from_kwargs(**tiny, batch_size=16, num_workers=2))
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
                np.testing.assert_allclose(a.features, b.features, rtol=0, atol=batch_atol, err_msg=name)
                assert np.abs(a.features).max() > 0.1  # real features, not zeros
        np.testing.assert_array_equal(ref["zoomldm_20x"].parent_idx, new["zoomldm_20x"].parent_idx)
    # the two reader processes read both slides (started once, kept between slides); close ends them
    readers, pids = ex.pass_.readers, {p.pid for p in psutil.Process().children()} - before
    assert readers is not None and readers.running and len(pids) == 2
    ex.close()
    assert not readers.running and not pids & {p.pid for p in psutil.Process().children()}


def test_a_held_lock_leaves_the_slide_to_its_owner(tiny, small_slides, tmp_path):
    ex = Extractor(ExtractConfig.from_kwargs(**tiny))
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


# ------------------------------------------------------------------ slide identity, damaged outputs


@pytest.fixture(scope="module")
def ref_extractor():
    """The reference run's settings (batch 3, no workers): reruns here must equal its bags bitwise."""
    from tests.features.conftest import TINY

    return Extractor(ExtractConfig.from_kwargs(**TINY, batch_size=3, num_workers=0))


def _outputs_equal(a_dir, b_dir, slide_id):
    """Every dataset of the slide's eight files is bitwise equal in both output dirs."""
    import h5py

    from zoomfeat.features.writer import slide_outputs

    a_paths, b_paths = slide_outputs(a_dir, slide_id), slide_outputs(b_dir, slide_id)
    for name, a in a_paths.items():
        with h5py.File(a, "r") as fa, h5py.File(b_paths[name], "r") as fb:
            assert fb.attrs["complete"] and set(fa) == set(fb), name
            for ds in fa:
                np.testing.assert_array_equal(fa[ds][()], fb[ds][()], err_msg=f"{name}/{ds}")


def _copy_slide_outputs(src, dst, slide_id):
    import shutil

    from zoomfeat.features.writer import slide_outputs

    for name, p in slide_outputs(src, slide_id).items():
        q = slide_outputs(dst, slide_id)[name]
        q.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, q)


def test_bags_record_the_slide_identity_outside_the_config_hash(reference_run, small_slides):
    import openslide

    from zoomfeat.bags import read_attrs
    from zoomfeat.features.writer import slide_outputs

    slide = small_slides / "det_b.svs"
    quickhash = openslide.OpenSlide(str(slide)).properties["openslide.quickhash-1"]
    for name, path in slide_outputs(reference_run, "det_b").items():
        attrs = read_attrs(path)
        assert attrs["slide_quickhash"] == quickhash and attrs["slide_size"] == slide.stat().st_size, name
        assert attrs["slide_path"] == str(slide.resolve())
        # identity is not in the hash (bags: their family's recipe; coords files: the tile grid)
        hashed = attrs["grid"] if name.startswith("patches") else attrs["recipe"]
        assert "slide" not in str(hashed).replace("slide_id", "")


def test_a_moved_slide_reuses_its_bags(ref_extractor, reference_run, small_slides, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(small_slides / "det_b.svs", moved / "det_b.svs")
    _copy_slide_outputs(reference_run, tmp_path / "out", "det_b")
    assert ref_extractor.extract(moved / "det_b.svs", tmp_path / "out").status == "skipped"


def test_a_slide_replaced_on_disk_is_detected_even_with_overwrite(
    ref_extractor, reference_run, small_slides, tmp_path
):
    import shutil

    from zoomfeat.features.outputs import SlideIdentityError

    slides = tmp_path / "slides"
    slides.mkdir()
    slide = slides / "det_b.svs"
    shutil.copy(small_slides / "det_b.svs", slide)
    out = tmp_path / "out"
    _copy_slide_outputs(reference_run, out, "det_b")  # extracted from small_slides/det_b.svs
    shutil.copy(small_slides / "det_a.svs", slide)  # another slide under the same name
    for ex in (ref_extractor, Extractor(ref_extractor.cfg.replace(overwrite=True))):
        with pytest.raises(SlideIdentityError) as err:
            ex.extract(slide, out)
        msg = str(err.value)
        assert str((small_slides / "det_b.svs").resolve()) in msg and str(slide.resolve()) in msg
        assert "different slide with the same file name" in msg and "quickhash" in msg
    _outputs_equal(reference_run, out, "det_b")  # untouched


def test_same_named_slides_from_two_folders_in_two_runs_fail_naming_both(tiny, small_slides, tmp_path):
    import shutil

    from zoomfeat.features.runner import extract_slides
    from zoomfeat.slide.manifest import discover

    a, b, out = tmp_path / "site_a", tmp_path / "site_b", tmp_path / "out"
    for d, src in ((a, "det_b"), (b, "det_a")):
        d.mkdir()
        shutil.copy(small_slides / f"{src}.svs", d / "s1.svs")
    config = ExtractConfig.from_kwargs(**tiny)
    ex = Extractor(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = extract_slides(discover([a]), out, config, extractor=ex, echo=lambda m: None)
        second = extract_slides(discover([b]), out, config, extractor=ex, echo=lambda m: None)
    assert [r.status for r in first.results] == ["done"]
    assert [r.status for r in second.results] == ["failed"], second.report()
    error = second.results[0].error
    assert "SlideIdentityError" in error and str(a / "s1.svs") in error and str(b / "s1.svs") in error


def _kill_after_publishing(slide, out, n_renames):
    """Run the reference extraction of ``slide`` in a subprocess that SIGKILLs itself after
    ``n_renames`` files were published: what a run killed while publishing leaves."""
    import subprocess
    import sys
    import textwrap

    from tests.features.conftest import TINY

    code = textwrap.dedent(f"""
        import os, signal, warnings
        warnings.simplefilter("ignore")
        real, count = os.replace, [0]
        def replace(src, dst):
            real(src, dst)
            count[0] += 1
            if count[0] >= {n_renames}:
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        from zoomfeat.features.config import ExtractConfig
        from zoomfeat.features.pipeline import Extractor
        Extractor(ExtractConfig.from_kwargs(**{TINY!r}, batch_size=3, num_workers=0)).extract({str(slide)!r}, {str(out)!r})
    """)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]


def test_a_killed_run_ends_in_complete_correct_bags_after_one_plain_rerun(
    ref_extractor, reference_run, small_slides, tmp_path
):
    from zoomfeat.features.writer import slide_outputs

    out = tmp_path / "out"
    _kill_after_publishing(small_slides / "det_b.svs", out, 4)  # 2 patches files + 2 of 6 bags
    paths = slide_outputs(out, "det_b")
    assert sum(p.is_file() for p in paths.values()) == 4 and list(out.rglob(".*.tmp-*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a killed run is not "damaged": no warning
        assert ref_extractor.extract(small_slides / "det_b.svs", out).status == "done"
    assert not list(out.rglob(".*.tmp-*"))
    _outputs_equal(reference_run, out, "det_b")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _unmark(path):
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs["complete"] = False


def _garbage(path):
    path.write_bytes(b"\0" * 100)


@pytest.mark.parametrize(
    "output, damage",
    [("zoomldm_fused", _truncate), ("uni_5x", _unmark), ("patches_20x", _garbage), ("patches_5x", _truncate)],
    ids=[
        "truncated bag",
        "bag without completeness mark",
        "unreadable patches file",
        "truncated patches file",
    ],
)
def test_a_damaged_output_is_named_and_recomputed_by_one_plain_rerun(
    ref_extractor, reference_run, small_slides, tmp_path, output, damage
):
    from zoomfeat.features.pipeline import DamagedOutputWarning
    from zoomfeat.features.writer import slide_outputs

    out = tmp_path / "out"
    _copy_slide_outputs(reference_run, out, "det_b")
    bad = slide_outputs(out, "det_b")[output]
    damage(bad)
    with pytest.warns(DamagedOutputWarning) as caught:
        result = ref_extractor.extract(small_slides / "det_b.svs", out)
    assert result.status == "done"
    assert len(caught) == 1 and str(bad) in str(caught[0].message)
    assert "another tool or version" not in str(caught[0].message)
    _outputs_equal(reference_run, out, "det_b")


def test_non_finite_features_fail_the_slide_and_publish_nothing(tiny, small_slides, tmp_path):
    import torch

    from zoomfeat.features.writer import NonFiniteFeaturesError, slide_outputs

    ex = Extractor(ExtractConfig.from_kwargs(**tiny))
    real = ex.models.latent_features  # the UNet part of zoomldm_features (the executor calls it)

    def overflow(*args, **kwargs):
        f = {name: v.clone() for name, v in real(*args, **kwargs).items()}
        f["zoomldm"][0, 0] = torch.inf
        return f

    ex.models.latent_features = overflow
    with pytest.raises(NonFiniteFeaturesError, match=r"det_b.*zoomldm_20x.*inf.*precision=fp32"):
        ex.extract(small_slides / "det_b.svs", tmp_path)
    assert not any(p.exists() for p in slide_outputs(tmp_path, "det_b").values())
    assert not list(tmp_path.rglob(".*.tmp-*"))
