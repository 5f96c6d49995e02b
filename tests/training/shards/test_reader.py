"""Reading shards: the index's errors for missing, empty and inconsistent data directories."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from zoomfeat.training.shards import ShardError, ShardIndex, ShardsNotFoundError

from .conftest import C, write


def test_missing_and_empty_data_dir_errors(tmp_path):
    with pytest.raises(ShardsNotFoundError, match="does not exist.*zoomfeat.prepare"):
        ShardIndex.load(tmp_path / "nope")
    assert issubclass(ShardsNotFoundError, FileNotFoundError)
    with pytest.raises(ShardError, match="holds no prepared slides"):
        ShardIndex.load(tmp_path)
    write(tmp_path, "a", {0: 2})
    with pytest.raises(ShardError, match="holds no tiles at magnification"):
        ShardIndex.load(tmp_path, mags=["5x"])
    with pytest.raises(ShardError, match="unknown magnification '3x'"):
        ShardIndex.load(tmp_path, mags=["3x"])


def test_mismatched_shapes_are_clear_errors(tmp_path):
    write(tmp_path, "a", {0: 2, 2: 2})
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
    # a truncated record target
    rec = json.loads((tmp_path / "records" / "a.json").read_text())
    rec["mags"]["0"]["count"] = 50
    (tmp_path / "records" / "a.json").write_text(json.dumps(rec))
    with h5py.File(path, "r+") as f:
        del f["latent"]
        f.create_dataset("latent", data=np.zeros((2, 3, 64, 64), np.float16))
    with pytest.raises(ShardError, match=r"m0/a\.h5: holds 2 latents.*need 50 rows"):
        ShardIndex.load(tmp_path)
