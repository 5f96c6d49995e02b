"""Training tests run torch on one thread (and start their subprocesses so too): exact resume
comparisons need the same thread count in every process, and on the shared 2-core machine one
thread per process is several times faster than two fighting for the cores.

Also the shards every trainer test reads: written by the real writer, with random latents and
grids of the tiny model's shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zoomfeat.training.shards import ShardWriter, grid_side

#: environment of every training subprocess: one OpenMP and one MKL thread, and MKL's conditional
#: numerical reproducibility (its kernels then give the same bits whatever the memory alignment)
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT"}


@pytest.fixture(autouse=True)
def one_thread_env(one_thread, monkeypatch):
    """Every test here: one torch thread (``one_thread``, tests/conftest.py) and the one-thread
    BLAS/OpenMP settings in the environment the subprocesses it starts inherit (a conftest's
    ``pytestmark`` applies to no test, hence autouse)."""
    for k, v in ONE_THREAD_ENV.items():
        monkeypatch.setenv(k, v)


def make_data(path: Path, channels: int = 32, counts=None, seed: int = 0) -> Path:
    """Shards written by the real writer (latents and grids random, as the tiny model's are)."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(path, ssl_channels=channels, config_hash="test", pack_rows=0)
    for k, per_mag in enumerate(counts or [{0: 6, 2: 3}, {0: 4, 4: 2}]):
        with writer.slide(f"slide{k}") as s:
            for m, n in per_mag.items():
                g = grid_side(m)
                lat = (0.8 * rng.standard_normal((n, 3, 64, 64))).astype(np.float16)
                s.append(
                    m,
                    lat,
                    rng.standard_normal((n, channels, g, g)).astype(np.float16),
                    rng.integers(0, 5000, (n, 2)),
                    tile_size_level0=256 * 2**m,
                )
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("train_data") / "data")
