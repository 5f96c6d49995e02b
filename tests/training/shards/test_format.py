"""Shard format: magnification parsing, UNI-grid pooling, dataset.json agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomfeat.training.shards.format import ShardError, ensure_dataset_info, grid_side, parse_mag, pool_grid

from .conftest import C


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
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(grid), 8).numpy()
    # a mean of k=4 float32 values, in another order than torch's: |error| <= 4 u max|x|, with
    # u = 2^-24 and max|x| ~ 5 for normal samples, ~1.2e-6; 1e-6 rel + 1e-6 abs covers it
    np.testing.assert_allclose(pool_grid(grid), ref, rtol=1e-6, atol=1e-6)
    assert pool_grid(grid[:, :, :4, :4]).shape == (2, C, 4, 4)


def test_dataset_info_disagreement_names_both(tmp_path):
    ensure_dataset_info(tmp_path, {"ssl_channels": 8, "encoder": "a"})
    assert ensure_dataset_info(tmp_path, {"ssl_channels": 8})["encoder"] == "a"
    with pytest.raises(ShardError, match="encoder: directory has 'a', this run has 'b'"):
        ensure_dataset_info(tmp_path, {"ssl_channels": 8, "encoder": "b"})
