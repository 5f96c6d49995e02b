"""Sample grids: fixed conditions per magnification, the labelled PNG layout, uint8 conversion."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from zoomfeat.training.dataset import MultiScaleDataset
from zoomfeat.training.samples import pick_conditions, save_grid_png, to_uint8
from zoomfeat.training.shards import ShardIndex


def test_pick_conditions_are_fixed_and_evenly_spaced(data):
    ds = MultiScaleDataset(ShardIndex.load(data), seed=0)
    a, b = pick_conditions(ds, 2), pick_conditions(ds, 2)
    assert sorted(a) == [0, 2, 4]
    assert a[0]["latent"].shape == (2, 3, 64, 64) and a[2]["ssl"].shape == (2, 32, 4, 4)
    assert all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])
    # first and last tile of each magnification
    assert torch.equal(a[0]["latent"][1], torch.from_numpy(ds.reader.read(0, 9)["latent"].astype(np.float32)))


def test_grid_png_layout(tmp_path):
    imgs = to_uint8(torch.linspace(-2, 2, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8))
    assert imgs.dtype == np.uint8 and imgs.shape == (2, 8, 8, 3) and imgs.min() == 0 and imgs.max() == 255
    path = save_grid_png(tmp_path / "g" / "m0.png", [("data", imgs), ("sample", imgs[:1])], "title")
    # label column 70 px + 2 tiles of 8 + 2 px padding; header 16 px + 2 rows of 8 + 2 px
    assert Image.open(path).size == (70 + 2 * 10, 16 + 2 * 10)
