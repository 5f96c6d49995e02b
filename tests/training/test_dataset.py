"""The training stream: reproducible per sample number, rank/accum layout, mag weights, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomfeat.training.dataset import (
    MultiScaleDataset,
    StepBatchSampler,
    collate_multiscale,
    mag_probabilities,
    make_loader,
)
from zoomfeat.training.shards import ShardIndex, ShardWriter, grid_side

C = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    writer = ShardWriter(d, ssl_channels=C, config_hash="h", pack_rows=0)
    for k, counts in enumerate([{0: 6, 2: 2, 4: 1}, {0: 4, 2: 2}]):
        with writer.slide(f"s{k}") as s:
            for m, n in counts.items():
                g = grid_side(m)
                latent = (
                    np.full((n, 3, 64, 64), 0, np.float16)
                    + np.arange(n, dtype=np.float16)[:, None, None, None]
                    + 100 * m
                )
                s.append(
                    m,
                    latent,
                    rng.standard_normal((n, C, g, g)).astype(np.float16),
                    rng.integers(0, 999, (n, 2)),
                    tile_size_level0=256 * 2**m,
                )
    return d


def test_sample_is_a_function_of_its_number(data_dir):
    ds = MultiScaleDataset(ShardIndex.load(data_dir), seed=3)
    a, b = ds[17], ds[17]
    for key in ("latent", "ssl", "noise"):
        assert torch.equal(a[key], b[key])
    assert (a["mag"], a["t"], a["keep"]) == (b["mag"], b["t"], b["keep"])
    c = MultiScaleDataset(ShardIndex.load(data_dir), seed=4)[17]
    assert not torch.equal(a["noise"], c["noise"])
    assert a["ssl"].shape == (C, grid_side(a["mag"]), grid_side(a["mag"]))


def test_magnification_and_dropout_statistics(data_dir):
    ds = MultiScaleDataset(ShardIndex.load(data_dir), seed=0, p_uncond=0.1)
    draws = [ds.draw(n) for n in range(3000)]
    counts = np.bincount([d["mag"] for d in draws], minlength=5)
    # uniform over the available magnifications (0, 2, 4), not over tiles (10 / 4 / 1)
    assert set(np.flatnonzero(counts)) == {0, 2, 4}
    assert all(abs(counts[m] / 3000 - 1 / 3) < 0.04 for m in (0, 2, 4))
    dropped = np.mean([not d["keep"] for d in draws])
    assert abs(dropped - 0.1) < 0.02
    ts = np.array([d["t"] for d in draws])
    assert ts.min() >= 0 and ts.max() <= 999 and abs(ts.mean() - 499.5) < 25
    weighted = MultiScaleDataset(ShardIndex.load(data_dir), seed=0, mag_weights={"20x": 3, "5x": 1})
    counts = np.bincount([weighted.draw(n)["mag"] for n in range(2000)], minlength=5)
    assert counts[4] == 0 and abs(counts[0] / 2000 - 0.75) < 0.04


def test_mag_probabilities_errors():
    assert mag_probabilities([0, 2]) == {0: 0.5, 2: 0.5}
    assert mag_probabilities([0, 2], [1, 3]) == {0: 0.25, 2: 0.75}
    with pytest.raises(ValueError, match="does not have"):
        mag_probabilities([0, 2], {"1.25x": 1})
    with pytest.raises(ValueError, match="2 magnifications"):
        mag_probabilities([0, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="positive sum"):
        mag_probabilities([0], [0])


def test_batch_layout_is_independent_of_ranks_and_accumulation():
    def numbers(bs, world, accum, steps=3, start=0):
        out = {}
        for r in range(world):
            smp = StepBatchSampler(bs, steps, start_step=start, world_size=world, rank=r, grad_accum=accum)
            it = iter(smp)
            for s in range(start, steps):
                out.setdefault(s, []).extend(n for _ in range(accum) for n in next(it))
        return {s: sorted(v) for s, v in out.items()}

    ref = numbers(4, 1, 1)
    assert ref == numbers(2, 2, 1) == numbers(2, 1, 2) == numbers(1, 2, 2)
    assert ref[1] == list(range(4, 8))
    # resuming at step 2 yields exactly the uninterrupted run's tail
    assert numbers(2, 2, 1, start=2)[2] == ref[2]
    # ranks are disjoint
    r0 = [n for b in StepBatchSampler(2, 3, world_size=2, rank=0) for n in b]
    r1 = [n for b in StepBatchSampler(2, 3, world_size=2, rank=1) for n in b]
    assert (
        not set(r0) & set(r1)
        and len(StepBatchSampler(2, 3, start_step=1, world_size=2, rank=0, grad_accum=2)) == 4
    )
    fixed = StepBatchSampler(2, 3, repeat_first_step=True)
    assert [b for b in fixed] == [[0, 1]] * 3


def test_loader_with_workers_matches_in_process(data_dir):
    ds = MultiScaleDataset(ShardIndex.load(data_dir), seed=1)
    ref = [collate_multiscale([ds[n] for n in b]) for b in StepBatchSampler(4, 3)]
    got = list(make_loader(ds, StepBatchSampler(4, 3), num_workers=2))
    assert len(got) == 3
    for a, b in zip(ref, got):
        for key in ("latent", "noise", "t", "keep", "mag", "n"):
            assert torch.equal(a[key], b[key]), key
        assert [(m, r.tolist()) for m, r, _ in a["ssl_groups"]] == [
            (m, r.tolist()) for m, r, _ in b["ssl_groups"]
        ]
        for (m, rows, grids), (_, _, grids2) in zip(a["ssl_groups"], b["ssl_groups"]):
            assert torch.equal(grids, grids2) and grids.shape[-1] == grid_side(m)
            assert torch.equal(a["mag"][rows], torch.full((len(rows),), m))
