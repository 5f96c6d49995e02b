"""zoomfeat.slide.manifest: inputs (files, directories, CSVs) and deterministic shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoomfeat.slide.manifest import SlideSpec, discover, shard


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_directories_files_and_csv_manifests(tmp_path):
    d = tmp_path / "slides"
    a, b = _touch(d / "b.svs"), _touch(d / "a.ndpi")
    _touch(d / "notes.txt")
    _touch(d / ".hidden.svs")
    _touch(d / "sub" / "deep.svs")  # not recursive
    c = _touch(tmp_path / "other" / "c.tif")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_path,mpp,label\nother/c.tif,0.25,1\nslides/b.svs,,0\n")
    specs = discover([d, manifest, c])
    assert [s.path for s in specs] == sorted([a.resolve(), b.resolve(), c.resolve()], key=str)
    # duplicates are merged; the manifest gave c its own mpp
    assert discover([c, manifest, d]) == specs  # the order of the inputs does not matter
    by_id = {s.slide_id: s for s in specs}
    assert by_id["c"].mpp == 0.25 and by_id["b"].mpp is None and by_id["a"].slide_id == "a"


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover([tmp_path / "typo.svs"])
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\nx,1\n")
    with pytest.raises(ValueError, match="path column"):
        discover([bad])
    _touch(tmp_path / "x" / "s1.svs")
    _touch(tmp_path / "y" / "s1.tif")
    with pytest.raises(ValueError, match="same file name"):
        discover([tmp_path / "x", tmp_path / "y"])


def test_shards_partition_the_sorted_list_whatever_the_input_order():
    specs = [SlideSpec(Path(f"/s/{i:02d}.svs")) for i in range(7)]
    parts = [shard(sorted(specs, key=str), i, 3) for i in range(3)]
    assert sorted(p for part in parts for p in part) == sorted(specs)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert shard(specs, 1, 3) == [specs[1], specs[4]]
    with pytest.raises(ValueError, match="shard.index"):
        shard(specs, 3, 3)


@pytest.mark.parametrize(
    "name, slide_id",
    [
        ("x.ome.tiff", "x"),  # TRIDENT's compound extensions (trident/IO.py COMPOUND_EXTENSIONS, splitext)
        ("x.OME.TIF", "x"),
        ("scan.ome.zarr", "scan"),
        ("TCGA-A1.v2.svs", "TCGA-A1.v2"),  # otherwise os.path.splitext: only the last suffix goes
        ("slide.tiff", "slide"),
        ("noext", "noext"),
    ],
)
def test_slide_id_follows_trident_for_compound_extensions(tmp_path, name, slide_id):
    from zoomfeat.slide.naming import slide_id_from_path

    assert slide_id_from_path(Path("/data") / name) == slide_id
    assert SlideSpec(Path("/data") / name).slide_id == slide_id


def test_ome_tiff_is_discovered_under_trident_id_and_clashes_are_caught(tmp_path):
    d = tmp_path / "slides"
    _touch(d / "a.ome.tiff")
    _touch(d / "b.svs")
    assert [s.slide_id for s in discover([d])] == ["a", "b"]
    _touch(d / "a.svs")  # same id "a" as a.ome.tiff: their bags would overwrite each other
    with pytest.raises(ValueError, match="same file name"):
        discover([d])


def test_an_opened_ome_tiff_slide_has_the_trident_id(tmp_path):
    from zoomfeat.slide import Slide
    from zoomfeat.slide.synthetic import write_synthetic_slide

    path = write_synthetic_slide(
        tmp_path / "case7.ome.tiff", width=600, height=400, levels=1, vendor="generic"
    )
    (spec,) = discover([tmp_path])
    assert Slide.open(path).slide_id == spec.slide_id == "case7"
