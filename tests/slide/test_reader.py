"""zoomfeat.slide.reader: MPP, magnification, region reads, pickling, bad input (real openslide reads)."""

from __future__ import annotations

import pickle
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile
from PIL import Image

from zoomfeat.slide import Slide, SlideError, resolve_mpp


@pytest.fixture(scope="module")
def cmu(cmu_slide):
    return Slide.open(cmu_slide)


@pytest.fixture(scope="module")
def aperio40(synthetic_slide_factory):
    # 40x Aperio-style pyramid: 0.25 um/px, 4 levels (2048, 1024, 512, 256)
    return synthetic_slide_factory("aperio40", width=2048, height=1536, mpp=0.25, levels=4, vendor="aperio")


def _level0(path, x, y, w, h):
    import openslide

    s = openslide.OpenSlide(str(path))
    return np.asarray(s.read_region((x, y), 0, (w, h)).convert("RGB"))


# ---------------------------------------------------------------------- MPP / magnification
def test_cmu_mpp_and_magnification(cmu, cmu_slide):
    assert cmu.mpp == pytest.approx(0.499)
    assert cmu.mpp_source == "openslide"
    assert cmu.magnification == pytest.approx(10 / 0.499)  # 20.04x, not rounded to 20
    assert cmu.magnification != 20.0
    assert cmu.dimensions == (2220, 2967)
    assert cmu.level_count == 1 and cmu.vendor == "aperio"
    assert cmu.slide_id == "CMU-1-Small-Region" and cmu.path == cmu_slide
    assert "20.04x" in repr(cmu)


def test_aperio_40x_pyramid(aperio40):
    s = Slide.open(aperio40)
    assert s.vendor == "aperio" and s.level_count == 4
    assert s.mpp == pytest.approx(0.25) and s.magnification == pytest.approx(40.0)
    assert s.objective_power == 40
    assert s.level_downsamples == pytest.approx((1, 2, 4, 8))
    assert (
        s.best_level(2.0) == 1
        and s.best_level(3.9) == 1
        and s.best_level(100) == 3
        and s.best_level(1.0) == 0
    )


def test_generic_tiff_resolution_tags(synthetic_slide_factory):
    path = synthetic_slide_factory("generic", width=1024, height=768, mpp=0.5, levels=3, vendor="generic")
    s = Slide.open(path)
    assert s.vendor == "generic-tiff"
    assert s.mpp == pytest.approx(0.5) and s.magnification == pytest.approx(20.0)
    # The same file's TIFF tags alone (as a driver that does not fill openslide.mpp-* would leave them)
    props = {k: v for k, v in s.properties.items() if not k.startswith("openslide.mpp")}
    assert props["tiff.ResolutionUnit"] == "centimeter"
    info = resolve_mpp(props, path)
    assert info.source == "tiff-resolution" and info.mpp == pytest.approx(0.5)
    # inch unit: 101600 px/inch = 0.25 um/px
    assert resolve_mpp(
        {"tiff.XResolution": "101600", "tiff.YResolution": "101600", "tiff.ResolutionUnit": "inch"}, "x"
    ).mpp == pytest.approx(0.25)


def test_implausible_resolution_tags_are_not_used():
    # 72 dpi is a default of image writers, not a microscope: must not become 352.8 um/px silently
    with pytest.raises(SlideError, match=r"dpi\.tif.*implausible.*mpp="):
        resolve_mpp(
            {"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "inch"}, "dpi.tif"
        )


def test_slide_without_mpp_errors_and_override_works(synthetic_slide_factory):
    path = synthetic_slide_factory("nompp", width=1024, height=768, mpp=0.5, levels=2, vendor="none")
    with pytest.raises(SlideError, match=r"nompp\.tif.*no resolution.*mpp=") as err:
        Slide.open(path)
    assert isinstance(err.value, ValueError)
    s = Slide.open(path, mpp=0.5)
    assert s.mpp == 0.5 and s.mpp_source == "override" and s.magnification == pytest.approx(20.0)
    assert s.read_region(0, 0, 64, 0.5).shape == (64, 64, 3)


def test_mpp_override_wins_and_is_validated(cmu_slide):
    assert Slide.open(cmu_slide, mpp=0.25).magnification == pytest.approx(40.0)
    for bad in (-1, 0, "abc", float("nan")):
        with pytest.raises(SlideError, match="CMU-1-Small-Region.svs"):
            Slide.open(cmu_slide, mpp=bad)


def test_objective_power_only_on_request_and_with_a_warning(cmu):
    props = {
        k: v
        for k, v in cmu.properties.items()
        if k not in ("openslide.mpp-x", "openslide.mpp-y", "aperio.MPP")
    }
    with pytest.raises(SlideError, match=r"objective power 20x.*objective_power_fallback=True"):
        resolve_mpp(props, cmu.path)
    with pytest.warns(UserWarning, match="objective power 20x"):
        info = resolve_mpp(props, cmu.path, objective_power_fallback=True)
    assert info.source == "objective-power" and info.mpp == pytest.approx(0.5)


# ---------------------------------------------------------------------- reading
def test_read_region_20x_from_40x_equals_reference_resize(aperio40):
    s = Slide.open(aperio40)
    ref0 = _level0(aperio40, 512, 256, 512, 512)
    ref = np.asarray(Image.fromarray(ref0).resize((256, 256), Image.LANCZOS)).astype(int)
    got = s.read_region(512, 256, 256, 0.5).astype(int)  # from level 1 (downsample 2)
    assert got.shape == (256, 256, 3) and got.dtype == np.int64
    diff = np.abs(got - ref)
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 20, (diff.mean(), np.percentile(diff, 99))
    # a fractional box and scale (0.6 um/px = 2.4x, from level 1 with a residual 1.2x resize)
    x0, y0, n = 301.7, 190.2, 200
    ext = n * 0.6 / 0.25
    big = _level0(aperio40, 290, 180, 520, 520)
    ref = np.asarray(
        Image.fromarray(big).resize(
            (n, n), Image.LANCZOS, box=(x0 - 290, y0 - 180, x0 - 290 + ext, y0 - 180 + ext)
        )
    )
    diff = np.abs(s.read_region(x0, y0, n, 0.6).astype(int) - ref.astype(int))
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 20, (diff.mean(), np.percentile(diff, 99))
    # the read must actually follow the box: a shift of 8 level-0 px shows
    shifted = np.abs(s.read_region(x0 + 8, y0, n, 0.6).astype(int) - ref.astype(int))
    assert shifted.mean() > 2 * diff.mean()


def test_read_region_at_native_resolution_is_exact(synthetic_slide_factory):
    path = synthetic_slide_factory(
        "lossless", width=1024, height=1024, mpp=0.25, levels=3, compression="zlib"
    )
    s = Slide.open(path)
    np.testing.assert_array_equal(s.read_region(100, 60, 300, 0.25), _level0(path, 100, 60, 300, 300))


def test_outside_pixels_are_white(cmu):
    w, h = cmu.dimensions
    tile = cmu.read_region(-200, -100, 256, cmu.mpp)
    assert (tile[:95, :] == 255).all() and (tile[:, :195] == 255).all()
    assert tile[120:, 220:].mean() < 250  # the slide itself is there
    corner = cmu.read_region(w - 100, h - 50, 256, 0.5)
    assert (corner[60:, :] == 255).all() and (corner[:, 110:] == 255).all()
    far = cmu.read_region(w + 1000, 0, 64, 0.5)
    assert (far == 255).all()


def test_pickle_reopens_lazily_and_reads_identically(cmu):
    ref = cmu.read_region(700.5, 900.25, 128, 0.5)
    clone = pickle.loads(pickle.dumps(cmu))
    assert clone._backend is None and clone.mpp == cmu.mpp and clone.path == cmu.path
    np.testing.assert_array_equal(clone.read_region(700.5, 900.25, 128, 0.5), ref)
    assert clone._backend is not None


def test_threads_read_like_serial(cmu):
    boxes = [(x, y) for x in (0, 500, 1000, 1500) for y in (300, 1300)]
    serial = [cmu.read_region(x, y, 128, 0.5) for x, y in boxes]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda b: cmu.read_region(b[0], b[1], 128, 0.5), boxes))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


class _Regions:
    def __init__(self, slide, boxes):
        self.slide, self.boxes = slide, boxes

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, i):
        x, y = self.boxes[i]
        return self.slide.read_region(x, y, 96, 0.5)


def test_dataloader_workers_reopen_the_slide(cmu):
    import torch

    boxes = [(100 * i, 150 * i) for i in range(8)]
    ds = _Regions(cmu, boxes)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, np.stack([ds[i] for i in range(len(ds))]))


# ---------------------------------------------------------------------- bad input
def test_not_a_slide(tmp_path):
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide")
    with pytest.raises(SlideError, match=r"notes\.svs.*not a slide"):
        Slide.open(text)
    png = tmp_path / "photo.svs"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(png, format="PNG")
    with pytest.raises(SlideError, match=r"photo\.svs.*not a slide"):
        Slide.open(png)
    with pytest.raises(FileNotFoundError, match="missing.svs"):
        Slide.open(tmp_path / "missing.svs")
    with pytest.raises(SlideError, match="directory"):
        Slide.open(tmp_path)


def _corrupt_tiles(path, page: int, tiles) -> None:
    """Overwrite the compressed bytes of some tiles of one TIFF page with noise."""
    with tifffile.TiffFile(path) as tif:
        offsets, counts = tif.pages[page].dataoffsets, tif.pages[page].databytecounts
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for t in tiles:
        o, c = offsets[t], counts[t]
        data[o : o + c] = rng.integers(0, 256, c, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_unreadable_tiles_give_a_clear_error(synthetic_slide_factory, tmp_path):
    path = tmp_path / "corrupt.svs"
    shutil.copy(synthetic_slide_factory("to_corrupt", width=1024, height=1024, mpp=0.5, levels=2), path)
    _corrupt_tiles(path, 0, [0])  # level 0, top-left 256x256 tile
    s = Slide.open(path)  # the header is fine
    with pytest.raises(SlideError, match=r"corrupt\.svs.*cannot read"):
        s.read_region(10, 10, 64, 0.5)
    # the handle recovers for intact tiles after the error
    assert s.read_region(600, 600, 64, 0.5).shape == (64, 64, 3)
    # every tile of every level broken: building a grid fails with the file named, no crash
    from zoomfeat.slide import TileGrid

    _corrupt_tiles(path, 0, range(16))
    _corrupt_tiles(path, 1, range(4))
    with pytest.raises(SlideError, match=r"corrupt\.svs"):
        TileGrid.build(Slide.open(path))


def test_truncated_file(synthetic_slide_factory, tmp_path):
    src = synthetic_slide_factory("to_truncate", width=1024, height=1024, mpp=0.5, levels=2)
    path = tmp_path / "truncated.svs"
    path.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    with pytest.raises(SlideError, match=r"truncated\.svs"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Slide.open(path)
            s.read_region(0, 0, 1024, 0.5)
            s.read_region(0, 0, 1024, 2.0)


def test_identity_is_quickhash_size_and_resolved_path(cmu_slide):
    import openslide

    ident = Slide.open(cmu_slide).identity()
    assert ident["quickhash"] == openslide.OpenSlide(str(cmu_slide)).properties["openslide.quickhash-1"]
    assert ident["size"] == cmu_slide.stat().st_size and ident["path"] == str(cmu_slide.resolve())


def test_missing_slide_is_runtime_input_not_found(tmp_path):
    from zoomfeat.runtime.errors import InputNotFoundError
    from zoomfeat.slide.reader import MissingInputError

    assert MissingInputError is InputNotFoundError
    with pytest.raises(InputNotFoundError, match="nope.svs"):
        Slide.open(tmp_path / "nope.svs")


def test_no_resolution_suggests_the_command_line_key(synthetic_slide_factory):
    path = synthetic_slide_factory("nompp", width=1024, height=768, mpp=0.5, levels=2, vendor="none")
    with pytest.raises(SlideError, match=r"`mpp=0\.25` on the command line"):
        Slide.open(path)
