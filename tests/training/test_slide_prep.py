"""One slide into shards: the stored latents and UNI grids are those of independent slide reads
(tiny model and encoder), at every magnification, pooled beyond 8x8."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from zoomfeat.training.config import PrepareConfig
from zoomfeat.training.prepare import prepare
from zoomfeat.training.shards import ShardIndex, ShardReader, read_record
from zoomfeat.training.vq import vq_fingerprint


@pytest.fixture(scope="module")
def tiny():
    from zoomfeat.encoders import build_encoder
    from zoomfeat.model import ZoomLDM

    return ZoomLDM.from_config("tiny", seed=0), build_encoder("tiny", seed=0)


@pytest.fixture(scope="module")
def small_slide(synthetic_slide_factory):
    # 1024 x 1024 px at 0.5 um/px: 16 20x tiles, 4 10x tiles, one 5x tile
    return synthetic_slide_factory(
        "prep_small", width=1024, height=1024, mpp=0.5, levels=2, seed=3, tissue_fraction=0.5
    )


def _cfg(out, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 16)
    kw.setdefault("progress", False)
    return PrepareConfig(out_dir=str(out), **kw)


def _uni(encoder, tiles):
    with torch.no_grad():
        return encoder(encoder.preprocess(torch.from_numpy(np.stack(tiles)))).numpy()


def _vq(model, tiles):
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1
    with torch.no_grad():
        return model.encode(x).numpy()


def test_synthetic_slide_contents_match_slide_reads(tmp_path, tiny, small_slide):
    from zoomfeat.slide import Slide, TileGrid, split_parent

    model, encoder = tiny
    out = tmp_path / "data"
    summary = prepare([small_slide], _cfg(out, mags=["20x", "10x", "5x"]), model, encoder)
    assert summary["done"] == ["prep_small"] and not summary["failed"]
    index = ShardIndex.load(out)
    counts = index.counts()
    assert summary["tiles"] == {"20x": counts[0], "10x": counts[1], "5x": counts[2]}
    assert counts[0] >= 4 and counts[1] >= 2 and counts[2] == 1
    info = json.loads((out / "dataset.json").read_text())
    assert (
        info["ssl_channels"] == 32
        and info["vq"] == vq_fingerprint(model)
        and info["encoder"].startswith("tiny:")
    )

    slide = Slide.open(small_slide)
    reader = ShardReader(index)
    for m in (0, 1, 2):
        with h5py.File(index.data_dir / f"m{m}" / "prep_small.h5") as f:
            side = 2**m
            assert f["ssl"].shape[1:] == (32, side, side)  # grid size per magnification
            assert f["latent"].dtype == np.float16 and f["latent"].shape[1:] == (3, 64, 64)
            assert (f["mag"][()] == m).all()
        mag = 20 / 2**m
        grid = TileGrid.build(slide, tile_px=256, mag=mag, parent_mag=mag / 4, progress=False)
        kept = np.flatnonzero(grid.children.kept)
        assert len(kept) == counts[m]
        tiles = [reader.read(m, i) for i in range(counts[m])]
        # same set of tiles as the slide code's grid (coords), in any order
        assert sorted(map(tuple, grid.children.xy[kept].tolist())) == sorted(
            tuple(t["coords"].tolist()) for t in tiles
        )
        # one tile per magnification, recomputed from the slide independently
        t = tiles[-1]
        k = kept[[tuple(xy) for xy in grid.children.xy[kept].tolist()].index(tuple(t["coords"].tolist()))]
        x0, y0, size = grid.child_box_level0(int(k))
        if m == 2:  # the 5x tile is the 4x4 block downsampled (what extraction encodes)
            region = slide.read_region(x0, y0, 1024, 0.5)
            image = split_parent(region)[1]
        else:
            image = grid.read_child(slide, int(k))
        # Stored as float16: |x - fp16(x)| <= 2^-11 |x| (4.9e-4 relative), i.e. <= 2e-3 for the
        # latents' |z| <= 4 and the embeddings' |e| <= 4; batching the encoders changes float32
        # results by ~1e-6 only. rtol 1e-2 and atol 2e-2 are 10x those bounds.
        np.testing.assert_allclose(
            t["latent"].astype(np.float32), _vq(model, [image])[0], atol=2e-2, rtol=1e-2
        )
        s20 = size / side
        cells = [
            slide.read_region(x0 + dx * s20, y0 + dy * s20, 256, 0.5)
            for dy in range(side)
            for dx in range(side)
        ]
        ref = _uni(encoder, cells).reshape(side, side, -1).transpose(2, 0, 1)
        np.testing.assert_allclose(t["ssl"].astype(np.float32), ref, atol=2e-2, rtol=1e-2)


def test_coarse_magnification_pools_the_grid(tmp_path, tiny, synthetic_slide_factory):
    """At 1.25x a tile covers 16x16 20x tiles; the stored grid is their 8x8 average pool."""
    from zoomfeat.slide import Slide, TileGrid

    model, encoder = tiny
    path = synthetic_slide_factory(
        "prep_big", width=4096, height=4096, mpp=0.5, levels=4, seed=5, tissue_fraction=0.6
    )
    out = tmp_path / "data"
    res = prepare([path], _cfg(out, mags=["1.25x"], batch_size=64), model, encoder)
    assert res["tiles"] == {"1.25x": 1}
    t = ShardReader(ShardIndex.load(out)).read(4, 0)
    assert t["ssl"].shape == (32, 8, 8)
    slide = Slide.open(path)
    grid20 = TileGrid.build(slide, tile_px=256, mag=20, parent_mag=5, min_tissue=0.0, progress=False)
    assert grid20.child_size_level0 == 256
    cells = [slide.read_region(x * 256, y * 256, 256, 0.5) for y in range(16) for x in range(16)]
    emb = _uni(encoder, cells).astype(np.float16).astype(np.float32).reshape(16, 16, -1).transpose(2, 0, 1)
    ref = emb.reshape(-1, 8, 2, 8, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(t["ssl"].astype(np.float32), ref, atol=2e-2, rtol=1e-2)


def test_real_cmu_slide(tmp_path, tiny, cmu_slide):
    model, encoder = tiny
    out = tmp_path / "data"
    res = prepare([cmu_slide], _cfg(out, mags=["5x", "2.5x"]), model, encoder)
    assert res["done"] == ["CMU-1-Small-Region"]
    index = ShardIndex.load(out)
    assert index.counts() == {2: res["tiles"]["5x"], 3: res["tiles"]["2.5x"]}
    assert index.counts()[2] >= 2 and index.counts()[3] >= 1
    rec = read_record(out, "CMU-1-Small-Region")
    assert abs(rec["mpp"] - 0.499) < 1e-3
    assert rec["mags"]["2"]["tile_size_level0"] == round(1024 * 0.5 / rec["mpp"])
    reader = ShardReader(index)
    for m, g in ((2, 4), (3, 8)):
        for i in range(index.counts()[m]):
            t = reader.read(m, i)
            assert t["ssl"].shape == (32, g, g) and np.isfinite(t["latent"]).all()
            assert t["slide_id"] == "CMU-1-Small-Region"
            # tissue tiles: the latent is not the latent of a blank (white) tile
            assert np.abs(t["latent"].astype(np.float32)).mean() > 0
