"""zoomfeat.features.writer: streaming bags that only appear when complete (atomic, fsync-ed)."""

from __future__ import annotations

import numpy as np
import pytest

from zoomfeat.bags import FEATURE_SET_MAG, PerMag, bag_is_complete, open_bag
from zoomfeat.features.writer import SlideBagWriter, remove_stale_temporaries, slide_outputs
from zoomfeat.runtime.atomic import tmp_name

ATTRS20 = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40.0, "target_magnification": 20,
           "overlap": 0, "name": "s", "level0_width": 4096, "level0_height": 4096}  # fmt: skip
ATTRS5 = {**ATTRS20, "patch_size_level0": 2048, "target_magnification": 5}
DIMS = {"zoomldm_20x": 4, "zoomldm_5x": 4, "zoomldm_fused": 8, "uni_20x": 3, "uni_5x": 3, "uni_fused": 6}


def _writer(tmp_path):
    coords20 = np.array([[0, 0], [512, 0], [2048, 0]])
    coords5 = np.array([[0, 0], [2048, 0]])
    return SlideBagWriter(tmp_path, "s", dims=DIMS, coords=PerMag(x20=coords20, x5=coords5),
                          coords_attrs=PerMag(x20=ATTRS20, x5=ATTRS5), parent_idx=np.array([0, 0, 1]),
                          attrs={"config_hash": "abc", "timestep": 200}, set_attrs={"uni_20x": {"encoder": "uni"}},
                          chunk_rows=2)  # fmt: skip


def test_rows_stream_in_and_files_appear_only_when_finished(tmp_path):
    w = _writer(tmp_path)
    paths = slide_outputs(tmp_path, "s")
    rng = np.random.default_rng(0)
    data = {
        n: rng.standard_normal((3 if FEATURE_SET_MAG[n] == 20 else 2, d)).astype(np.float32)
        for n, d in DIMS.items()
    }
    for name, rows in data.items():
        w.write(name, 0, rows[:1])
        assert not paths[name].exists() and list(paths[name].parent.glob(".s.h5.tmp-*"))
        w.write(name, 1, rows[1:])
    out = w.finish()
    assert set(out) == set(paths) and all(bag_is_complete(p, "abc") for p in out.values())
    for name, rows in data.items():
        bag = open_bag(out[name])
        np.testing.assert_array_equal(bag.features, rows)
        assert bag.attrs["feature_set"] == name and bag.attrs["timestep"] == 200
        assert (bag.parent_idx is not None) == (FEATURE_SET_MAG[name] == 20)
    assert open_bag(out["uni_20x"]).attrs["encoder"] == "uni"
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_incomplete_or_failed_writes_publish_nothing(tmp_path):
    w = _writer(tmp_path)
    w.write("uni_20x", 0, np.zeros((3, 3)))
    with pytest.raises(RuntimeError, match="0 of 3 rows written; not publishing"):
        w.finish()
    w.abort()
    assert not any(p.exists() for p in slide_outputs(tmp_path, "s").values())
    assert not list(tmp_path.rglob("*.tmp-*"))
    with pytest.raises(KeyError):
        with _writer(tmp_path) as w2:
            w2.write("uni_5x", 0, np.ones((2, 3)))
            w2.write("no_such_set", 0, np.ones((2, 3)))
    assert not list(tmp_path.rglob("*.h5*"))
    with pytest.raises(ValueError, match="cannot write rows"):
        _writer(tmp_path).write("uni_5x", 1, np.ones((2, 3)))


def test_stale_temporaries_are_removed(tmp_path):
    paths = slide_outputs(tmp_path, "s")
    stale = paths["uni_5x"].parent / ".s.h5.tmp-99999"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    keep = paths["uni_5x"].parent / ".other.h5.tmp-99999"
    keep.write_bytes(b"another slide's")
    assert remove_stale_temporaries(paths) == [stale]
    assert keep.exists()
    # what this process's atomic writes leave when killed is recognised too (runtime.atomic.tmp_name)
    ours = tmp_name(paths["zoomldm_20x"])
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"killed mid-write")
    assert remove_stale_temporaries(paths) == [ours] and not ours.exists()


@pytest.mark.parametrize(
    "precision, advice", [("fp16", "precision=fp32 or precision=bf16"), ("fp32", "avoid fp16")]
)
def test_non_finite_rows_are_refused_naming_slide_and_set(tmp_path, precision, advice):
    from zoomfeat.features.writer import NonFiniteFeaturesError
    from zoomfeat.runtime.errors import ZoomfeatError

    coords20, coords5 = np.array([[0, 0], [512, 0], [2048, 0]]), np.array([[0, 0], [2048, 0]])
    w = SlideBagWriter(tmp_path, "s", dims=DIMS, coords=PerMag(x20=coords20, x5=coords5),
                       coords_attrs=PerMag(x20=ATTRS20, x5=ATTRS5), parent_idx=np.array([0, 0, 1]),
                       attrs={"config_hash": "abc", "precision": precision})  # fmt: skip
    rows = np.ones((2, 4), np.float32)
    rows[1, 2] = np.nan
    with pytest.raises(NonFiniteFeaturesError) as err:
        w.write("zoomldm_5x", 0, rows)
    msg = str(err.value)
    assert isinstance(err.value, ZoomfeatError)
    assert (
        "slide 's'" in msg
        and "zoomldm_5x" in msg
        and "1 non-finite value(s) (NaN)" in msg
        and "from row 1" in msg
    )
    assert advice in msg
    w.abort()
    assert not list(tmp_path.rglob("*.h5")) and not list(tmp_path.rglob(".*.tmp-*"))
