"""Fixtures of the generation tests: the golden generation tensors, the tiny model, a fake model.

The fake model is a cheap, deterministic stand-in with ZoomLDM's interface (per-sample
operations only) for the property tests: call counts against the cost formulas, chunk-size
invariance, tile order and window counts. Numerics are tested against the golden data with the
real tiny model.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

GOLDEN_FILE = "zoomldm_tiny_generation.safetensors"


@pytest.fixture(scope="session")
def gen_golden(golden_dir: Path) -> dict[str, torch.Tensor]:
    """The official generation outputs (G1-G7) on the tiny checkpoint (tests/data/golden/generation).

    The repository carries them: a missing file is a failure, never a skip."""
    from safetensors.torch import load_file

    path = golden_dir / "generation" / GOLDEN_FILE
    if not path.is_file():
        pytest.fail(f"golden generation data missing: {path}")
    return load_file(str(path))


def _tiny(golden_dir: Path, ema: bool):
    from zoomfeat.model import ZoomLDM

    return ZoomLDM.from_official(
        golden_dir / "zoomldm_tiny.ckpt", config=golden_dir / "zoomldm_tiny.yaml", ema=ema
    ).eval()


@pytest.fixture(scope="session")
def tiny_ema(golden_dir):
    return _tiny(golden_dir, True)


@pytest.fixture(scope="session")
def tiny_live(golden_dir):
    return _tiny(golden_dir, False)


class _Unet(nn.Module):
    def __init__(self, ctx: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 3, 1)
        self.ctx = nn.Linear(ctx, 3)

    def forward(self, x, t, encoder_hidden_states):
        c = self.ctx(encoder_hidden_states.mean(1))[:, :, None, None]
        tt = t.float()[:, None, None, None] / 1000.0
        return SimpleNamespace(sample=torch.tanh(self.conv_in(x) * (1 + tt)) + 0.1 * c)


class _Summ(nn.Module):
    def __init__(self, c: int, d: int):
        super().__init__()
        self.dim_reduce = nn.Linear(c, d)
        self.mag = nn.Embedding(8, d)

    def forward(self, x, mag):
        mag = torch.as_tensor(mag).long().reshape(-1).expand(x.shape[0]).to(x.device)
        h = self.dim_reduce(x.flatten(2).mean(-1)) + self.mag(mag)
        return h[:, None, :].expand(-1, 65, -1) * torch.linspace(0.5, 1.5, 65)[None, :, None]


class FakeZoomLDM(nn.Module):
    """ZoomLDM's interface with cheap per-sample operations (decode: x4 upsampling; encode: x4 pooling)."""

    def __init__(self, ssl: int = 8, ctx: int = 8):
        super().__init__()
        from zoomfeat.model.schedule import Schedule

        torch.manual_seed(0)
        self.unet = _Unet(ctx)
        self.summarizer = _Summ(ssl, ctx)
        self.schedule = Schedule()
        self.ssl_channels, self.context_dim = ssl, ctx
        self.latent_channels, self.latent_size, self.image_size, self.num_mags = 3, 64, 256, 8

    @property
    def device(self):
        return torch.device("cpu")

    def decode(self, z, quantize=True):
        return F.interpolate(torch.tanh(z / 4), scale_factor=4, mode="nearest")

    def encode(self, img):
        return F.avg_pool2d(img, 4) * 4

    def condition(self, grid, mag):
        from zoomfeat.model.summarizer import prepare_ssl_grid

        return self.summarizer(prepare_ssl_grid(grid), mag)


@pytest.fixture()
def fake_model():
    return FakeZoomLDM()


def write_cdm_shards(path: Path, seed: int = 0) -> Path:
    """Real shards (``training.shards`` writer, HDF5) with the tiny model's shapes: UNI width 32,
    tiles at 20x (1x1 grids), 5x (4x4) and 1.25x (8x8: the 16x16 grid as prepare pools it)."""
    import numpy as np

    from zoomfeat.training.shards import ShardWriter, grid_side

    rng = np.random.default_rng(seed)
    writer = ShardWriter(path, ssl_channels=32, config_hash="test", pack_rows=0)
    with writer.slide("s0") as s:
        for m, n in {0: 5, 2: 3, 4: 2}.items():
            g = grid_side(m)
            s.append(
                m,
                rng.standard_normal((n, 3, 64, 64)).astype(np.float16),
                rng.standard_normal((n, 32, g, g)).astype(np.float16),
                rng.integers(0, 5000, (n, 2)),
                tile_size_level0=256 * 2**m,
            )
    return path


@pytest.fixture(scope="session")
def cdm_shards(tmp_path_factory) -> Path:
    return write_cdm_shards(tmp_path_factory.mktemp("cdm_shards") / "data")
