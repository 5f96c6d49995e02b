"""Shard format: writing slides, packing, resume records, index/reader and its errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from zoomfeat.training.shards import (
    ShardError,
    ShardIndex,
    ShardReader,
    ShardWriter,
    grid_side,
    list_records,
    parse_mag,
    pool_grid,
    read_record,
)

C = 8


def _tiles(m: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    g = grid_side(m)
    latent = rng.standard_normal((n, 3, 64, 64)).astype(np.float16)
    ssl = rng.standard_normal((n, C, g, g)).astype(np.float16)
    coords = rng.integers(0, 10000, (n, 2))
    return latent, ssl, coords


def _write(data_dir, slide_id, counts: dict[int, int], seed=0, pack_rows=0, config_hash="h1"):
    writer = ShardWriter(
        data_dir, ssl_channels=C, config_hash=config_hash, info={"encoder": "test"}, pack_rows=pack_rows
    )
    out = {}
    with writer.slide(slide_id, source=f"/slides/{slide_id}.svs") as s:
        for m, n in counts.items():
            s.start(m, 256 * 2**m)
            if n:
                out[m] = _tiles(m, n, seed + m)
                s.append(m, *out[m], tile_size_level0=256 * 2**m)
    writer.close()
    return out


def test_parse_mag_and_pooling():
    assert [parse_mag(x) for x in (0, "20x", "5x", 5.0, "1.25x", "m3", "2", 2, 20, "10")] == [
        0,
        0,
        2,
        2,
        4,
        3,
        2,
        2,
        0,
        1,
    ]
    with pytest.raises(ValueError, match="unknown magnification"):
        parse_mag("3x")
    assert [grid_side(m) for m in range(8)] == [1, 2, 4, 8, 8, 8, 8, 8]
    grid = np.random.default_rng(0).standard_normal((2, C, 16, 16)).astype(np.float32)
    import torch

    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(grid), 8).numpy()
    np.testing.assert_allclose(pool_grid(grid), ref, rtol=1e-6, atol=1e-6)
    assert pool_grid(grid[:, :, :4, :4]).shape == (2, C, 4, 4)


def test_write_read_roundtrip_and_record(tmp_path):
    tiles = _write(tmp_path, "slideA", {0: 5, 2: 3, 4: 0})
    rec = read_record(tmp_path, "slideA")
    assert rec["mags"]["0"] == {"file": "m0/slideA.h5", "start": 0, "count": 5, "tile_size_level0": 256}
    assert rec["mags"]["4"]["count"] == 0  # a magnification without tissue is recorded too
    assert rec["source"] == "/slides/slideA.svs" and rec["config_hash"] == "h1"
    index = ShardIndex.load(tmp_path)
    assert index.counts() == {0: 5, 2: 3}  # empty mags are not indexed
    reader = ShardReader(index)
    for m, (latent, ssl, coords) in tiles.items():
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


def test_packing_keeps_every_tile_and_repoints_records(tmp_path):
    ref = {}
    writer = ShardWriter(tmp_path, ssl_channels=C, config_hash="h", pack_rows=7)
    for k in range(4):
        with writer.slide(f"s{k}") as s:
            ref[k] = _tiles(0, 3, seed=10 + k)
            s.append(0, *ref[k], tile_size_level0=256)
    writer.close()
    packs = sorted((tmp_path / "m0").glob("pack-*.h5"))
    # 3+3+3 >= 7 packs three slides; the fourth (alone) stays a per-slide file
    assert len(packs) == 1
    assert sorted(p.name for p in (tmp_path / "m0").glob("s*.h5")) == ["s3.h5"]
    recs = list_records(tmp_path)
    assert [recs[f"s{k}"]["mags"]["0"]["start"] for k in range(3)] == [0, 3, 6]
    index = ShardIndex.load(tmp_path)
    reader = ShardReader(index)
    got = [reader.read(0, i) for i in range(12)]
    for k in range(4):
        for j in range(3):
            t = got[3 * k + j]
            assert t["slide_id"] == f"s{k}"
            np.testing.assert_array_equal(t["latent"], ref[k][0][j])
    # nothing temporary is left behind
    assert not list(tmp_path.rglob(".*tmp*"))


def test_uncommitted_slide_is_invisible_and_redone(tmp_path):
    _write(tmp_path, "done", {0: 2})
    writer = ShardWriter(tmp_path, ssl_channels=C, config_hash="h1")
    s = writer.slide("killed")
    s.append(0, *_tiles(0, 4, 1), tile_size_level0=256)
    # a run killed here: the temporary shard exists, no record, nothing visible
    assert ShardIndex.load(tmp_path).counts() == {0: 2}
    assert not writer.is_done("killed", [0]) and writer.is_done("done", [0])
    assert not writer.is_done("done", [0, 2])  # a new magnification makes the slide pending
    s.abort()
    assert not list((tmp_path / "m0").glob(".*"))


def test_added_magnification_merges_into_record(tmp_path):
    _write(tmp_path, "a", {0: 2})
    _write(tmp_path, "a", {2: 1})
    rec = read_record(tmp_path, "a")
    assert set(rec["mags"]) == {"0", "2"}
    # another config hash replaces the record
    _write(tmp_path, "a", {1: 1}, config_hash="h2")
    assert set(read_record(tmp_path, "a")["mags"]) == {"1"}


def test_missing_and_empty_data_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*zoomfeat.prepare"):
        ShardIndex.load(tmp_path / "nope")
    with pytest.raises(ShardError, match="holds no prepared slides"):
        ShardIndex.load(tmp_path)
    _write(tmp_path, "a", {0: 2})
    with pytest.raises(ShardError, match="holds no tiles at magnification"):
        ShardIndex.load(tmp_path, mags=["5x"])


def test_mismatched_shapes_are_clear_errors(tmp_path):
    _write(tmp_path, "a", {0: 2, 2: 2})
    # a shard whose grids have other channels than dataset.json
    path = tmp_path / "m2" / "a.h5"
    with h5py.File(path, "r+") as f:
        del f["ssl"]
        f.create_dataset("ssl", data=np.zeros((2, C + 1, 4, 4), np.float16))
    with pytest.raises(ShardError, match=r"m2/a\.h5: UNI grids have shape \(9, 4, 4\), expected \(8, 4, 4\)"):
        ShardIndex.load(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["ssl"]
        f.create_dataset("ssl", data=np.zeros((2, C, 4, 4), np.float16))
        del f["latent"]
        f.create_dataset("latent", data=np.zeros((2, 3, 32, 32), np.float16))
    with pytest.raises(ShardError, match=r"a\.h5: latents have shape \(3, 32, 32\)"):
        ShardIndex.load(tmp_path)
    # writing grids of the wrong size is refused up front
    writer = ShardWriter(tmp_path, ssl_channels=C, config_hash="h1")
    s = writer.slide("b")
    with pytest.raises(ShardError, match=r"UNI grids must be \(2, 8, 2, 2\)"):
        s.append(1, *_tiles(0, 2, 0)[:2], np.zeros((2, 2)), tile_size_level0=512)
    s.abort()
    # a different encoder width in the same directory
    with pytest.raises(ShardError, match="prepared with other settings.*ssl_channels"):
        ShardWriter(tmp_path, ssl_channels=C * 2, config_hash="h1")
    # a truncated record target
    rec = json.loads((tmp_path / "records" / "a.json").read_text())
    rec["mags"]["0"]["count"] = 50
    (tmp_path / "records" / "a.json").write_text(json.dumps(rec))
    with h5py.File(path, "r+") as f:
        del f["latent"]
        f.create_dataset("latent", data=np.zeros((2, 3, 64, 64), np.float16))
    with pytest.raises(ShardError, match=r"m0/a\.h5: holds 2 latents.*need 50 rows"):
        ShardIndex.load(tmp_path)
