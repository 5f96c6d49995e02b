"""Packing small per-slide shards into one: every tile kept, records re-pointed, nothing left over."""

from __future__ import annotations

import numpy as np

from zoomfeat.training.shards import ShardIndex, ShardReader, ShardWriter, list_records

from .conftest import C, tiles


def test_packing_keeps_every_tile_and_repoints_records(tmp_path):
    ref = {}
    writer = ShardWriter(tmp_path, ssl_channels=C, config_hash="h", pack_rows=7)
    for k in range(4):
        with writer.slide(f"s{k}") as s:
            ref[k] = tiles(0, 3, seed=10 + k)
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
