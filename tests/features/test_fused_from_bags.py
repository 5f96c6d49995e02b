"""Fused files derived from the bags (issue 20): a cohort extracted with ``bags.fused=derived`` (or
whose fused file is missing or damaged) and run again with ``bags.fused=file`` gets its fused files
from its 20x and 5x bags: no pixel read, no model call, the 20x and 5x files untouched, the fused
files equal to a fresh run's. A missing or damaged 20x or 5x bag is never derived from: its family
is computed, as before.

Real slides (the two synthetic Aperio files of conftest), the tiny model and encoder (the default
``zoomldm`` recipe family and the ``uni`` encoder family), real HDF5 files. Pixel reads and model
calls are counted by wrapping the real methods (test_store's ``counted``; the UNet here too).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.features.test_store import _digest, _run, calls_of, counted  # noqa: F401 - counted: a fixture
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.runner import extract_slides
from zoomfeat.features.slide_extraction import DamagedOutputWarning, SlideHooks
from zoomfeat.slide.manifest import discover

SLIDES = ("det_a", "det_b")
FAMILIES = ("zoomldm", "uni")
#: the attribute every file records that differs between two runs of one config: when it was written
RUN_SPECIFIC = {"created"}


def _rel(name: str, sid: str) -> str:
    mag = "5x" if name.endswith("_5x") else "20x"
    return f"{mag}_256px_0px_overlap/features_{name}/{sid}.h5"


@pytest.fixture(scope="module")
def runs(small_slides, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """``{dtype: {"derived": out_dir, "file": out_dir}}``: both small slides extracted with
    ``bags.fused=derived`` and, fresh into another out_dir, with ``bags.fused=file``."""
    root = tmp_path_factory.mktemp("fused_from_bags")
    out: dict[str, dict[str, Path]] = {}
    for dtype in ("float32", "float16"):
        out[dtype] = {}
        for fused in ("derived", "file"):
            d = root / f"{dtype}_{fused}"
            summary = _run(small_slides, d, **{"bags.dtype": dtype, "bags.fused": fused})
            assert summary.ok and [r.status for r in summary.results] == ["done", "done"], summary.report()
            out[dtype][fused] = d
    for sid in SLIDES:  # the derived run has no fused file
        assert not (out["float32"]["derived"] / _rel("zoomldm_fused", sid)).exists()
    return out


@pytest.fixture
def calls(request, monkeypatch) -> Counter:
    """test_store's ``counted`` (pixel reads, VQ encodings, encoder calls) and the UNet's calls."""
    from zoomfeat.features.models import FeatureModels

    seen: Counter = request.getfixturevalue("counted")

    real = FeatureModels.latent_features

    def counting(*args, **kwargs):
        seen["unet"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(FeatureModels, "latent_features", counting)
    return seen


def _stats(root: Path) -> dict[str, tuple[int, int]]:
    """``{file: (size, mtime in ns)}`` of every file under ``root``."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _bits(x: np.ndarray) -> np.ndarray:
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def _attrs(a: h5py.AttributeManager) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in a.items()}


def assert_same_file(got: Path, want: Path) -> None:
    """Every dataset of the two HDF5 files bitwise equal (dtype, shape, bits, chunking), and every
    attribute (file and dataset, the run's ``config`` among them) equal but :data:`RUN_SPECIFIC`.

    Bitwise holds on any CPU: both out_dirs were extracted in this process with the same thread
    count and batch shapes (the ``runs`` fixture), so their model rows are the same float
    operations in the same order, and a derived fused row copies the stored 20x and 5x values."""
    with h5py.File(got) as a, h5py.File(want) as b:
        assert sorted(a) == sorted(b) == ["coords", "features", "parent_idx"]
        for k in a:
            x, y = a[k][()], b[k][()]
            assert x.dtype == y.dtype and x.shape == y.shape and a[k].chunks == b[k].chunks, k
            assert len(x) > 0
            np.testing.assert_array_equal(
                _bits(x) if x.dtype.kind == "f" else x, _bits(y) if y.dtype.kind == "f" else y
            )
            assert _attrs(a[k].attrs) == _attrs(b[k].attrs), k
        fa, fb = _attrs(a.attrs), _attrs(b.attrs)
        assert set(fa) == set(fb) and RUN_SPECIFIC <= set(fa)
        assert json.loads(fa["config"])["bags"]["fused"] == "file"  # the settings of the run that wrote it
        assert {k: v for k, v in fa.items() if k not in RUN_SPECIFIC} == {
            k: v for k, v in fb.items() if k not in RUN_SPECIFIC
        }


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fused_files_are_derived_from_the_bags(runs, small_slides, dtype, tmp_path, calls):
    out = tmp_path / "out"
    shutil.copytree(runs[dtype]["derived"], out, copy_function=shutil.copy2)
    before, stats = _digest(out), _stats(out)
    summary = _run(small_slides, out, **{"bags.dtype": dtype, "bags.fused": "file"})
    assert summary.ok and [r.status for r in summary.results] == ["done", "done"], summary.report()
    # nothing read of the slides, no model ran: the fused rows came from the bags
    assert {**calls_of(calls), "unet": calls["unet"]} == {"pixels": 0, "vq": 0, "encoder": 0, "unet": 0}
    for r in summary.results:
        assert r.written == r.derived == list(FAMILIES) and r.reused == []
        assert (r.n20, r.n5, r.tiles) == (0, 0, 0)  # no tile extracted
        assert r.line().startswith(f"{r.slide_id}: no tile read, ")
        assert r.line().endswith(
            "(new: zoomldm_fused (from the 20x and 5x bags), uni_fused (from the 20x and 5x bags))"
        )
    # the run's summary and per-slide log: no slide extracted, both given their fused files
    assert (
        ": 0 extracted (0 tiles, 0.00 tiles/s), 2 given fused files from their bags, 0 already"
        in summary.report()
    )
    with open(summary.csv_path, newline="") as f:
        assert [row["fused_from_bags"] for row in csv.DictReader(f)] == ["zoomldm uni"] * 2
    # the 20x, 5x and coords files untouched: same bytes, same mtime; the fused files are the only new ones
    after = _digest(out)
    assert {k: v for k, v in after.items() if k in before} == before
    assert {k: v for k, v in _stats(out).items() if k in stats} == stats
    fused = {_rel(f"{f}_fused", sid) for f in FAMILIES for sid in SLIDES}
    assert {k for k in set(after) - set(before) if not k.startswith("logs/")} == fused  # and the run's log
    for rel in sorted(fused):  # equal to a fresh bags.fused=file run's
        assert_same_file(out / rel, runs[dtype]["file"] / rel)
    # a third run: everything complete, both slides skipped
    assert [r.status for r in _run(small_slides, out, **{"bags.dtype": dtype}).results] == [
        "skipped",
        "skipped",
    ]


def _extract(slides: Path, out: Path, *, plans: list | None = None, **kw) -> tuple:
    """An extraction like test_store's ``_run`` that records its warnings: (summary, warnings);
    ``plans`` gets the plan of every slide claimed (``on_slide_start``)."""
    from tests.features.test_store import SETTINGS

    hooks = SlideHooks(on_slide_start=(plans if plans is not None else []).append)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = ExtractConfig.from_kwargs(**{**SETTINGS, **kw})
        summary = extract_slides(discover([slides]), out, cfg, echo=lambda s: None, hooks=hooks)
    return summary, caught


def test_damaged_fused_file_is_derived_again(runs, small_slides, tmp_path, calls):
    out = tmp_path / "out"
    shutil.copytree(runs["float32"]["file"], out)
    bad = out / _rel("zoomldm_fused", "det_a")
    os.truncate(bad, bad.stat().st_size // 2)
    before = _digest(out)
    plans: list = []
    summary, caught = _extract(small_slides, out, plans=plans)
    assert summary.ok, summary.report()
    damaged = [w for w in caught if issubclass(w.category, DamagedOutputWarning)]
    assert len(damaged) == 1 and str(bad) in str(damaged[0].message)
    assert "the fused file derived again from the 20x and 5x bags" in str(damaged[0].message)
    # the plan's decision, and the free-space check's count: the fused file's arrays (features,
    # coords and parent_idx: 4 * D + 16 + 8 bytes a row)
    (plan,) = plans
    assert (
        plan.families["zoomldm"].from_bags
        and plan.from_bags_only
        and plan.families["zoomldm"].write == ("zoomldm_fused",)
    )
    with h5py.File(runs["float32"]["file"] / _rel("zoomldm_fused", "det_a")) as f:
        n, d = f["features"].shape
    assert plan.expected_bytes == n * (4 * d + 16 + 8) > 0
    assert [r.status for r in summary.results] == ["done", "skipped"]
    a = summary.results[0]
    assert a.written == a.derived == ["zoomldm"] and a.reused == ["uni"]
    assert "new: zoomldm_fused (from the 20x and 5x bags); kept: uni" in a.line()
    assert {**calls_of(calls), "unet": calls["unet"]} == {"pixels": 0, "vq": 0, "encoder": 0, "unet": 0}
    after = _digest(out)
    rel = _rel("zoomldm_fused", "det_a")
    assert {k: v for k, v in after.items() if k in before and k != rel} == {
        k: v for k, v in before.items() if k != rel
    }  # every other file as it was (the run adds its log)
    # as the run writing all three files itself wrote it
    assert_same_file(bad, runs["float32"]["file"] / rel)


@pytest.mark.parametrize("damage", ["missing 20x", "damaged 20x", "missing 5x", "damaged 5x"])
def test_missing_or_damaged_part_is_computed(runs, small_slides, tmp_path, calls, damage):
    """A fused file is never derived from a missing or damaged 20x or 5x bag: that family is
    computed from the slide (the other family's fused file is still derived from its bags)."""
    how, part = damage.split()
    out = tmp_path / "out"
    shutil.copytree(runs["float32"]["derived"], out)
    hit = out / _rel(f"zoomldm_{part}", "det_a")
    if how == "missing":
        hit.unlink()
    else:
        os.truncate(hit, hit.stat().st_size // 2)
    summary, caught = _extract(small_slides, out, **{"bags.fused": "file"})
    assert summary.ok, summary.report()
    assert any(issubclass(w.category, DamagedOutputWarning) for w in caught) == (how == "damaged")
    a, b = summary.results
    assert a.status == b.status == "done"
    assert a.derived == ["uni"] and a.written == ["zoomldm", "uni"]  # zoomldm computed, uni from its bags
    assert b.derived == ["zoomldm", "uni"]
    assert calls["pixels"] > 0 and calls["vq"] > 0 and calls["encoder"] > 0 and calls["unet"] > 0
    assert (a.n20, a.n5) == (6, 2)  # det_a's tiles (conftest), read and extracted
    # A computed set equals the fresh run's bitwise: both ran in this process with the same thread
    # count and batch shapes, so the same float operations in the same order, on any CPU.
    for sid in SLIDES:
        for f in FAMILIES:
            for s in (f"{f}_20x", f"{f}_5x", f"{f}_fused"):
                with (
                    h5py.File(out / _rel(s, sid)) as x,
                    h5py.File(runs["float32"]["file"] / _rel(s, sid)) as y,
                ):
                    np.testing.assert_array_equal(x["features"][()], y["features"][()])
                    np.testing.assert_array_equal(x["coords"][()], y["coords"][()])
