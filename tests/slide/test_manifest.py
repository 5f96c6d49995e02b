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
