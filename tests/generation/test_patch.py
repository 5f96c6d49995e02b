"""Patch conditioning from a slide region: tiles, the UNI grid (tiny encoder), the reference patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomfeat.generation.patch import (
    Region,
    embed_tiles,
    reference_patch,
    region_ssl_grid,
    sample_patches,
    split_tiles,
)
from zoomfeat.runtime.errors import ConfigError, InputError


def test_split_tiles_is_row_major():
    img = np.zeros((512, 512, 3), np.uint8)
    for n in range(4):
        r, c = divmod(n, 2)
        img[256 * r : 256 * (r + 1), 256 * c : 256 * (c + 1)] = n
    tiles = split_tiles(img, 2)
    assert [int(t.max()) for t in tiles] == [0, 1, 2, 3]


def test_region_grid_from_cmu(cmu_slide):
    from zoomfeat.encoders import build_encoder
    from zoomfeat.slide import Slide

    slide = Slide.open(cmu_slide)
    enc = build_encoder("tiny")
    region = Region(700, 1000, 2)  # 10x: 2x2 tiles of 256 px at 20x
    grid, img = region_ssl_grid(slide, region, enc)
    assert grid.shape == (32, 2, 2) and img.shape == (512, 512, 3)
    emb = embed_tiles(enc, split_tiles(img, 2))
    assert torch.allclose(grid[:, 1, 0], emb[2])  # cell (r, c) is tile n = 2r + c
    assert reference_patch(slide, region).shape == (256, 256, 3)
    with pytest.raises(InputError, match="does not fit"):
        region_ssl_grid(slide, Region(2000, 2800, 2), enc)


def test_sampler_choice_is_checked(fake_model):
    with pytest.raises(ConfigError):
        sample_patches(fake_model, torch.zeros(1, 65, 8), sampler="euler")
