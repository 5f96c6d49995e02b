"""Writing slides: round trip through the index, records, uncommitted slides, bad shapes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from zoomfeat.training.shards import ShardError, ShardIndex, ShardReader, ShardWriter, read_record

from .conftest import C, tiles, write


def test_write_read_roundtrip_and_record(tmp_path):
    written = write(tmp_path, "slideA", {0: 5, 2: 3, 4: 0})
    rec = read_record(tmp_path, "slideA")
    assert rec["mags"]["0"] == {"file": "m0/slideA.h5", "start": 0, "count": 5, "tile_size_level0": 256}
    assert rec["mags"]["4"]["count"] == 0  # a magnification without tissue is recorded too
    assert rec["source"] == "/slides/slideA.svs" and rec["config_hash"] == "h1"
    index = ShardIndex.load(tmp_path)
    assert index.counts() == {0: 5, 2: 3}  # empty mags are not indexed
    reader = ShardReader(index)
    for m, (latent, ssl, coords) in written.items():
        for i in range(len(latent)):
            t = reader.read(m, i)
            np.testing.assert_array_equal(t["latent"], latent[i])
            np.testing.assert_array_equal(t["ssl"], ssl[i])
            np.testing.assert_array_equal(t["coords"], coords[i])
            assert t["slide_id"] == "slideA" and t["mag"] == m
    with h5py.File(tmp_path / "m2" / "slideA.h5") as f:
        assert f["latent"].dtype == np.float16 and f["ssl"].shape == (3, C, 4, 4)
        assert f["latent"].maxshape[0] is None  # appendable
        assert list(f["mag"][()]) == [2, 2, 2]


def test_uncommitted_slide_is_invisible_and_redone(tmp_path):
    write(tmp_path, "done", {0: 2})
    writer = ShardWriter(tmp_path, ssl_channels=C, config_hash="h1")
    s = writer.slide("killed")
    s.append(0, *tiles(0, 4, 1), tile_size_level0=256)
    # a run killed here: the temporary shard exists, no record, nothing visible
    assert ShardIndex.load(tmp_path).counts() == {0: 2}
    assert not writer.is_done("killed", [0]) and writer.is_done("done", [0])
    assert not writer.is_done("done", [0, 2])  # a new magnification makes the slide pending
    s.abort()
    assert not list((tmp_path / "m0").glob(".*"))


def test_added_magnification_merges_into_record(tmp_path):
    write(tmp_path, "a", {0: 2})
    write(tmp_path, "a", {2: 1})
    rec = read_record(tmp_path, "a")
    assert set(rec["mags"]) == {"0", "2"}
    # another config hash replaces the record
    write(tmp_path, "a", {1: 1}, config_hash="h2")
    assert set(read_record(tmp_path, "a")["mags"]) == {"1"}


def test_bad_shapes_are_refused_up_front(tmp_path):
    write(tmp_path, "a", {0: 2})
    writer = ShardWriter(tmp_path, ssl_channels=C, config_hash="h1")
    s = writer.slide("b")
    with pytest.raises(ShardError, match=r"UNI grids must be \(2, 8, 2, 2\)"):
        s.append(1, *tiles(0, 2, 0)[:2], np.zeros((2, 2)), tile_size_level0=512)
    s.abort()
    # a different encoder width in the same directory
    with pytest.raises(ShardError, match="prepared with other settings.*ssl_channels"):
        ShardWriter(tmp_path, ssl_channels=C * 2, config_hash="h1")
