"""Every kind of slide, made from the CMU slide in the tests: one coordinate contract across readers.

The SVS (openslide), its DICOM copy (wsidicomizer, read by openslide 4), an OME-TIFF pyramid
(tifffile, SubIFDs, read by tiffslide), a PNG with ``mpp=`` and the SVS read by tiffslide give the
same level-0 size, MPP and tile grid. Pixels at 20x are *equal* (max abs difference 0): the DICOM
series carries the SVS's JPEG tiles unchanged and openslide and tiffslide decode them with the same
libjpeg-turbo; the OME-TIFF's level 0 and the PNG hold openslide's decoded pixels losslessly. Reads
served by a coarser level differ by construction (the OME-TIFF's own pyramid vs the SVS's single level).
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from zoomfeat.runtime.errors import ConfigError, InputError, SlideError
from zoomfeat.slide import Slide, TileGrid
from zoomfeat.slide.identity import SlideChangedError
from zoomfeat.slide.manifest import discover

GRID = {"progress": False, "lattice": "integer"}  # what feature extraction lays


@pytest.fixture(scope="module")
def forms(cmu_slide, cmu_dicom, cmu_ome, cmu_png):
    return {
        "svs": Slide.open(cmu_slide),
        "dicom": Slide.open(cmu_dicom),
        "ome": Slide.open(cmu_ome),
        "png": Slide.open(cmu_png, mpp=0.499),
        "svs-tiffslide": Slide.open(cmu_slide, reader="tiffslide"),
        "dicom-wsidicom": Slide.open(cmu_dicom, reader="wsidicom"),
    }


def test_readers_are_chosen_by_what_the_path_is(forms):
    assert {k: s.reader for k, s in forms.items()} == {
        "svs": "openslide",
        "dicom": "dicom",
        "ome": "tiffslide",
        "png": "image",
        "svs-tiffslide": "tiffslide",
        "dicom-wsidicom": "wsidicom",
    }
    assert forms["dicom"].slide_id == "CMU-1-dicom"  # the directory's name
    assert forms["ome"].slide_id == "CMU-1"  # .ome.tiff stripped whole
    assert forms["ome"].level_count == 3 and forms["ome"].vendor == "ome-tiff"
    # the resolution: openslide's (SVS, DICOM PixelSpacing), OME PhysicalSize in nm, mpp= for the PNG
    assert [forms[k].mpp_source for k in ("svs", "dicom", "ome", "png")] == [
        "openslide",
        "openslide",
        "openslide",
        "override",
    ]


def test_every_form_keeps_the_svs_coordinates_tiles_and_pixels(forms):
    ref = forms["svs"]
    ref_grid = TileGrid.build(ref, **GRID)
    assert ref_grid.children.kept.sum() > 0
    boxes = [(300.5, 400.25, 1024, 0.5), (1900.0, 2700.0, 512, 0.5), (-40.0, -30.0, 128, 0.5)]
    for name, s in forms.items():
        assert s.dimensions == ref.dimensions and s.mpp == pytest.approx(ref.mpp, abs=1e-12), name
        grid = TileGrid.build(s, **GRID)
        assert np.array_equal(grid.children.xy, ref_grid.children.xy), name
        assert np.array_equal(grid.children.kept, ref_grid.children.kept), name
        assert np.array_equal(grid.parents, ref_grid.parents), name
        for box in boxes:
            assert np.array_equal(s.read_region(*box), ref.read_region(*box)), (name, box)
    # outside the slide is white for every reader (the last box starts above-left of it)
    for s in forms.values():
        assert (s.read_region(-300.0, -300.0, 64, 0.5) == 255).all()
    # a 5x read of the OME-TIFF comes from its own level 2 (downsample 4.002): the same place, other resampling
    a, b = ref.read_region(0, 0, 256, 2.0).astype(int), forms["ome"].read_region(0, 0, 256, 2.0).astype(int)
    assert forms["ome"].best_level(4.0 * 0.5 / 0.499) == 2 and np.abs(a - b).mean() < 2.0


def test_fallback_readers():
    from zoomfeat.slide.backends import choose_reader, fallbacks

    assert choose_reader("/x/case-1", is_dir=True) == "dicom" and fallbacks("/x/case-1", "dicom") == (
        "wsidicom",
    )
    assert choose_reader("/x/a.tif") == "openslide" and fallbacks("/x/a.tif", "openslide") == (
        "tiffslide",
        "image",
    )
    assert (
        choose_reader("https://h/a.svs?sig=1") == "tiffslide"
        and choose_reader("/x/a.OME.TIFF") == "tiffslide"
    )
    assert choose_reader("/x/a.svs") == "openslide" and fallbacks("/x/a.svs", "openslide") == ()


def test_reader_can_be_forced_and_is_checked(cmu_slide, cmu_ome, tmp_path):
    assert Slide.open(cmu_ome, reader="openslide", mpp=0.499).level_count == 1  # openslide ignores SubIFDs
    with pytest.raises(ConfigError, match="reader='bioformats' is not a slide reader"):
        Slide.open(cmu_slide, reader="bioformats")
    junk = tmp_path / "junk.png"
    junk.write_text("not pixels")
    for reader, what in (
        ("image", "not an image"),
        ("tiffslide", "not a slide tiffslide"),
        ("auto", "not an image"),
    ):
        with pytest.raises(SlideError, match=f"junk.png.*{what}"):
            Slide.open(junk, reader=reader, mpp=0.5)


def test_pickled_slides_of_every_reader_reopen_and_read_the_same(forms):
    import pickle

    for name, s in forms.items():
        clone = pickle.loads(pickle.dumps(s))
        assert clone.reader == s.reader and clone._backend is None, name
        assert np.array_equal(clone.read_region(100, 100, 64, 0.5), s.read_region(100, 100, 64, 0.5)), name


# ---------------------------------------------------------------------- bad input: one line naming the slide
def test_plain_image_without_mpp_says_how_to_give_it(cmu_png):
    with pytest.raises(SlideError) as err:
        Slide.open(cmu_png)
    msg = str(err.value)
    assert "\n" not in msg and str(cmu_png) in msg and "mpp=0.25" in msg


def test_dicom_directory_with_two_series_is_refused(cmu_slide, cmu_dicom, tmp_path):
    from slide_files import dicom_second_series

    both = tmp_path / "two-series"
    shutil.copytree(cmu_dicom, both)
    dicom_second_series(cmu_slide, both)
    with pytest.raises(SlideError) as err:
        Slide.open(both)
    msg = str(err.value)
    assert "\n" not in msg and str(both) in msg and "2 DICOM series" in msg and "own directory" in msg


def test_dicom_without_pixel_spacing_asks_for_mpp(cmu_dicom, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    bare = tmp_path / "no-spacing"
    shutil.copytree(cmu_dicom, bare)
    for f in bare.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            for item in ds.get(seq, []):
                for group in item.get("PixelMeasuresSequence", []):
                    if "PixelSpacing" in group:
                        del group.PixelSpacing
        ds.save_as(f)
    with pytest.raises(SlideError) as err:
        Slide.open(bare)
    msg = str(err.value)
    assert "\n" not in msg and str(bare) in msg and "no resolution" in msg and "mpp=" in msg
    assert Slide.open(bare, mpp=0.499).dimensions == (2220, 2967)  # mpp= rescues it


def test_a_directory_of_no_dicom_is_not_a_slide(tmp_path):
    with pytest.raises(SlideError, match="is a directory, not a slide file"):
        Slide.open(tmp_path)


# ---------------------------------------------------------------------- discovery and names
def test_dicom_directories_are_one_slide_each(cmu_slide, cmu_dicom, cmu_png, tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copytree(cmu_dicom, cohort / "case-1.dcmdir")
    shutil.copy(cmu_slide, cohort / "case-2.svs")
    shutil.copy(cmu_png, cohort / "case-3.png")
    (cohort / "notes").mkdir()  # not a DICOM series: ignored
    specs = discover([cohort])
    assert [s.slide_id for s in specs] == ["case-1.dcmdir", "case-2", "case-3"]
    # a DICOM directory named on its own is one slide, not a folder of slides
    (spec,) = discover([cohort / "case-1.dcmdir"])
    assert spec.slide_id == "case-1.dcmdir" and Slide.open(spec.path).slide_id == "case-1.dcmdir"


def test_a_symlink_is_named_after_itself(cmu_slide, tmp_path):
    (tmp_path / "in").mkdir()
    link = tmp_path / "in" / "patient42.svs"
    link.symlink_to(cmu_slide)
    (spec,) = discover([tmp_path / "in"])
    assert spec.slide_id == "patient42" and spec.path == link
    assert Slide.open(spec.path).slide_id == "patient42"
    assert Slide.open(spec.path).identity()["path"] == str(cmu_slide.resolve())  # where it really is


def test_two_names_for_one_file_are_two_slides_and_a_warning(cmu_slide, tmp_path):
    for name in ("p1", "p2", "p3", "p4"):
        (tmp_path / f"{name}.svs").symlink_to(cmu_slide)
    with pytest.warns(UserWarning, match=r"one file listed under several names.*p1, p2, p3, p4"):
        specs = discover([tmp_path])
    assert [s.slide_id for s in specs] == ["p1", "p2", "p3", "p4"]


def test_manifest_slide_id_names_the_slide(cmu_slide, tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"path,slide_id,mpp\n{cmu_slide},patient-007,\n{cmu_slide},patient-008,0.5\n")
    with pytest.warns(UserWarning, match="several names"):
        specs = discover([manifest, cmu_slide])  # the bare path is named by the manifest, not a third slide
    assert [(s.slide_id, s.mpp) for s in specs] == [("patient-007", None), ("patient-008", 0.5)]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,slide_id\n{cmu_slide},../escape\n")
    with pytest.raises(InputError, match=r"bad.csv: row 2 has slide_id '../escape'"):
        discover([bad])


def test_empty_directory_message_lists_every_kind(tmp_path):
    from zoomfeat.extract import no_slides_message

    msg = no_slides_message([str(tmp_path)])
    for kind in (".svs", ".ndpi", ".ome.tiff", ".png", ".jpg", "DICOM", "s3://", "https://"):
        assert kind in msg, kind


# ---------------------------------------------------------------------- identity
def test_a_slide_changed_while_read_is_caught(slide_copy, cmu_dicom, tmp_path):
    s = Slide.open(slide_copy)
    s.read_region(500, 500, 256, 0.5)
    s.check_unchanged()  # nothing changed: no error
    data = slide_copy.read_bytes()
    slide_copy.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # rewritten in place, same size
    with pytest.raises(SlideChangedError) as err:
        s.check_unchanged()
    assert (
        "\n" not in str(err.value) and str(slide_copy) in str(err.value) and "not published" in str(err.value)
    )
    # a DICOM series: any of its instances
    series = shutil.copytree(cmu_dicom, tmp_path / "series")
    d = Slide.open(series)
    victim = sorted(series.glob("*.dcm"))[-1]
    with victim.open("ab") as fh:
        fh.write(b"\0\0")
    with pytest.raises(SlideChangedError, match=rf"series.*{victim.name}: size"):
        d.check_unchanged()


def test_identity_of_other_readers_is_a_content_hash(forms, cmu_slide):
    ids = {k: s.identity() for k, s in forms.items()}
    assert ids["svs"]["quickhash"] == forms["svs"].properties["openslide.quickhash-1"]
    assert ids["svs-tiffslide"]["quickhash"].startswith("zf1:") and ids["ome"]["quickhash"].startswith("zf1:")
    assert ids["svs"]["size"] == ids["svs-tiffslide"]["size"] == cmu_slide.stat().st_size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Slide.open(cmu_slide, reader="tiffslide").identity() == ids["svs-tiffslide"]  # stable
