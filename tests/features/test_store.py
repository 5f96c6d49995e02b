"""The tile store (``store=DIR``; docs/tile-store.md): a later run with new recipes reads the store
instead of the slide, equals a fresh run, and a store entry is checked like a bag.

Real slides (the synthetic Aperio files of conftest), the tiny model and encoder, real HDF5 files.
The calls that must not happen are counted by wrapping the real methods of the real classes
(slide reads, the VQ encoder, the embedding encoders); the algorithm has no test switch.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import warnings
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.features.conftest import TINY
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.runner import extract_slides
from zoomfeat.slide.manifest import discover

#: three more recipes than the first run's default one: another timestep, another tap and pooling,
#: and a 2-draw ensemble
RECIPES = [
    {"name": "t50", "timestep": 50},
    {"name": "midmax", "taps": ["middle_block"], "pooling": "max"},
    {"name": "ens2", "ensemble": 2},
]
#: the same batch size in every run: then a feature read from the store equals a fresh run's bit for
#: bit (the store keeps z0 and the embeddings as the float32 tensors the fresh run computes, and the
#: UNet sees the same batches in the same memory layout); across batch sizes the bound would be
#: conftest's batch_atol (oneDNN's blocking by batch size)
SETTINGS = {**TINY, "batch_size": 3, "num_workers": 0}


def _run(slides: Path, out: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = ExtractConfig.from_kwargs(**{**SETTINGS, **kw})
        return extract_slides(discover([slides]), out, cfg, echo=lambda s: None)


def _one(slides: Path, name: str, root: Path) -> Path:
    d = root / f"only_{name}"
    d.mkdir()
    src = next(p for p in slides.iterdir() if p.stem == name)
    shutil.copy(src, d / src.name)
    return d


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def counted(monkeypatch) -> Counter:
    """Count every slide pixel read, VQ encoding and encoder call (the real methods, wrapped)."""
    from zoomfeat.encoders.base import TileEncoder
    from zoomfeat.model.zoomldm import ZoomLDM
    from zoomfeat.slide.reader import Slide

    calls: Counter = Counter()

    def wrap(cls, name, key):
        real = getattr(cls, name)

        def counting(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(cls, name, counting)

    for name in ("read_region", "read_box", "read_level_rgb", "thumbnail", "_read_rgba"):
        wrap(Slide, name, "pixels")
    wrap(ZoomLDM, "encode", "vq")
    wrap(TileEncoder, "__call__", "encoder")
    return calls


@pytest.fixture(scope="module")
def stored(small_slides, tmp_path_factory):
    """Both small slides extracted with the default recipe and a store: (out_dir, store)."""
    root = tmp_path_factory.mktemp("store_first")
    out, store = root / "out", root / "store"
    summary = _run(small_slides, out, store=str(store))
    assert summary.ok and [r.status for r in summary.results] == ["done", "done"], summary.report()
    return out, store


def test_second_run_reads_only_the_store(stored, small_slides, reference_run, tmp_path, counted):
    out0, store0 = stored
    out, store = tmp_path / "out", tmp_path / "store"
    shutil.copytree(out0, out)
    shutil.copytree(store0, store)
    before = _digest(store)
    # the first run's default-recipe bags are those of a run without a store
    for sid in ("det_a", "det_b"):
        for s in ("zoomldm_20x", "zoomldm_5x", "uni_20x"):
            rel = f"{'5x' if s.endswith('5x') else '20x'}_256px_0px_overlap/features_{s}/{sid}.h5"
            np.testing.assert_array_equal(
                h5py.File(out / rel)["features"][:], h5py.File(reference_run / rel)["features"][:]
            )

    summary = _run(small_slides, out, store=str(store), **{"features.recipes": RECIPES})
    assert summary.ok and [r.status for r in summary.results] == ["done", "done"], summary.report()
    assert all(r.written == ["t50", "midmax", "ens2"] for r in summary.results)
    assert calls_of(counted) == {"pixels": 0, "vq": 0, "encoder": 0}  # the UNet (+ Summarizer) only
    assert _digest(store) == before  # read, not rewritten

    # a fresh run of the same recipes (no store, another out_dir), all of it from the pixels
    fresh = tmp_path / "fresh"
    assert _run(small_slides, fresh, **{"features.recipes": RECIPES}).ok
    assert counted["pixels"] > 0 and counted["vq"] > 0 and counted["encoder"] > 0
    for sid in ("det_a", "det_b"):
        for fam in ("t50", "midmax", "ens2"):
            for s, mag in ((f"{fam}_20x", "20x"), (f"{fam}_5x", "5x"), (f"{fam}_fused", "20x")):
                rel = f"{mag}_256px_0px_overlap/features_{s}/{sid}.h5"
                with h5py.File(out / rel) as a, h5py.File(fresh / rel) as b:
                    assert a["features"].shape == b["features"].shape and len(a["features"]) > 0
                    # bitwise at the same batch size (see SETTINGS)
                    np.testing.assert_array_equal(a["features"][:], b["features"][:])
                    np.testing.assert_array_equal(a["coords"][:], b["coords"][:])
                    assert a.attrs["config_hash"] == b.attrs["config_hash"]
        for mag in ("20x", "5x"):
            rel = f"{mag}_256px_0px_overlap/patches/{sid}_patches.h5"
            np.testing.assert_array_equal(
                h5py.File(out / rel)["coords"][:], h5py.File(fresh / rel)["coords"][:]
            )


def calls_of(c: Counter) -> dict[str, int]:
    return {k: c[k] for k in ("pixels", "vq", "encoder")}


def test_store_is_a_training_data_directory(stored):
    """``train data_dir={store}`` reads the store's 20x and 5x tiles as it reads prepare's shards."""
    from zoomfeat.model.zoomldm import ZoomLDM
    from zoomfeat.tilestore import weights_fingerprint
    from zoomfeat.training.shards import ShardIndex, ShardReader
    from zoomfeat.training.vq import vq_fingerprint

    _, store = stored
    index = ShardIndex.load(store)
    assert index.counts() == {0: 6 + 3, 2: 2 + 1}  # kept 20x tiles and 5x parents of det_a + det_b
    tile = ShardReader(index).read(2, 0)
    assert tile["latent"].shape == (3, 64, 64) and tile["ssl"].shape == (32, 4, 4)
    model = ZoomLDM.load(None, config="tiny", allow_random_weights=True, seed=0)
    assert weights_fingerprint(model.vq.state_dict()) == vq_fingerprint(model) == index.info["vq"]


def test_store_of_another_slide_or_tiling_is_one_line(stored, small_slides, tmp_path, counted):
    _, store0 = stored
    only_b = _one(small_slides, "det_b", tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    for sub, ext in (("records", "json"), ("m0", "h5"), ("m2", "h5")):  # det_a's entry under det_b's name
        (store / sub).mkdir()
        shutil.copy(store0 / sub / f"det_a.{ext}", store / sub / f"det_b.{ext}")
    before = _digest(store)
    summary = _run(only_b, tmp_path / "out", store=str(store))
    (r,) = summary.results
    assert r.status == "failed" and "\n" not in r.error
    assert r.error.startswith("StoreMismatchError: ") and str(store / "records" / "det_b.json") in r.error
    assert "another store dir" in r.error and "overwrite=true" in r.error
    assert _digest(store) == before and not list(
        (tmp_path / "out").rglob("*.h5")
    )  # nothing lost, nothing written

    # another tiling: the store of the first run, a tissue threshold of 0.4
    store2 = tmp_path / "store2"
    shutil.copytree(store0, store2)
    before = _digest(store2)
    summary = _run(only_b, tmp_path / "out2", store=str(store2), **{"tissue.min_tissue": 0.4})
    (r,) = summary.results
    assert r.status == "failed" and r.error.startswith("StoreMismatchError: ") and "min_tissue" in r.error
    assert _digest(store2) == before
    # overwrite=true replaces the entry (computed from the slide)
    counted.clear()
    assert _run(only_b, tmp_path / "out2", store=str(store2), overwrite=True, **{"tissue.min_tissue": 0.4}).ok
    assert counted["pixels"] > 0
    from zoomfeat.tilestore import inspect_entry

    entry = inspect_entry(store2, "det_b")
    assert entry.state == "complete" and entry.record["grid"]["min_tissue"] == 0.4


@pytest.mark.parametrize("damage", ["truncated", "unfinished"])
def test_damaged_or_partial_entry_is_recomputed(stored, small_slides, tmp_path, counted, damage):
    out0, store0 = stored
    only_b = _one(small_slides, "det_b", tmp_path)
    out, store = tmp_path / "out", tmp_path / "store"
    shutil.copytree(out0, out)
    shutil.copytree(store0, store)
    m0 = store / "m0" / "det_b.h5"
    if damage == "truncated":  # a file cut short (a full disk, a copy interrupted)
        with open(m0, "r+b") as f:
            f.truncate(m0.stat().st_size // 2)
        ctx = pytest.warns(UserWarning, match=r"damaged tile-store entry, recomputing it: .*det_b\.h5")
    else:  # a run killed before the entry's record was written: files but no marker
        (store / "records" / "det_b.json").unlink()
        ctx = warnings.catch_warnings()
    with ctx:
        cfg = ExtractConfig.from_kwargs(**SETTINGS, store=str(store), **{"features.recipes": RECIPES[:1]})
        summary = extract_slides(discover([only_b]), out, cfg, echo=lambda s: None)
    assert summary.ok, summary.report()
    assert counted["pixels"] > 0 and counted["vq"] > 0  # recomputed from the slide
    from zoomfeat.tilestore import inspect_entry

    entry = inspect_entry(store, "det_b")
    assert entry.state == "complete"
    with h5py.File(m0) as a, h5py.File(store0 / "m0" / "det_b.h5") as b:
        np.testing.assert_array_equal(a["latent"][:], b["latent"][:])  # the same latents again
    # and read back: the next recipe makes no pixel read
    counted.clear()
    assert _run(only_b, out, store=str(store), **{"features.recipes": RECIPES[1:2]}).ok
    assert calls_of(counted) == {"pixels": 0, "vq": 0, "encoder": 0}


def _bags(root: Path) -> dict[str, tuple[str, int]]:
    """Every HDF5 file and preview under ``root``: (sha256, mtime in ns)."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".h5", ".png")
    }


def _entry_arrays(store: Path, sid: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for m in ("m0", "m2"):
        with h5py.File(store / m / f"{sid}.h5") as f:
            names = [k for k in f if isinstance(f[k], h5py.Dataset)] + [f"emb/{k}" for k in f.get("emb", {})]
            out.update({f"{m}/{name}": f[name][()] for name in names})
    return out


def test_complete_bags_fill_the_store_only(stored, small_slides, reference_run, tmp_path, counted):
    """A cohort extracted without a store gets one afterwards: the bags are not touched, the entry
    is what a first run with the store writes, and the next recipes read it (no pixel, VQ, encoder)."""
    from zoomfeat.features.slide_extraction import SlideHooks
    from zoomfeat.tilestore import inspect_entry

    _, store0 = stored
    out, store = tmp_path / "out", tmp_path / "store"
    shutil.copytree(reference_run, out)  # a run without a store: every bag complete
    bags = _bags(out)
    assert len(bags) > 10

    # a fill stopped in its first slide (an error after its first parent) leaves no entry of it
    # and no temporary file; the other slide's entry is published
    def fail_in_det_a(done: int, total: int) -> None:
        if total == 8 and done < total:  # det_a: 6 kept 20x tiles + 2 parents
            raise RuntimeError("stopped in the middle of det_a")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = ExtractConfig.from_kwargs(**SETTINGS, store=str(store))
        summary = extract_slides(discover([small_slides]), out, cfg, echo=lambda s: None,
                                 hooks=SlideHooks(on_batch=fail_in_det_a))  # fmt: skip
    assert [r.status for r in summary.results] == ["failed", "done"], summary.report()
    assert "stopped in the middle of det_a" in summary.results[0].error
    assert (
        inspect_entry(store, "det_a").state == "absent" and inspect_entry(store, "det_b").state == "complete"
    )
    assert not [p for p in store.rglob("*") if ".tmp-" in p.name]
    assert _bags(out) == bags

    # the rerun fills det_a only; the bags stay byte for byte (and their mtimes)
    counted.clear()
    summary = _run(small_slides, out, store=str(store))
    assert summary.ok and [r.status for r in summary.results] == ["done", "skipped"], summary.report()
    (r, _) = summary.results
    assert r.store == "fill" and r.written == [] and "new: tile-store entry" in r.line()
    # the run's summary and per-slide log say so: a fill is not an extraction
    assert (
        ": 0 extracted (0 tiles, 0.00 tiles/s), 1 tile-store entry filled, 1 already complete"
        in summary.report()
    )
    with open(summary.csv_path, newline="") as f:
        rows = {row["slide_id"]: row for row in csv.DictReader(f)}
    assert (rows["det_a"]["store"], rows["det_b"]["store"]) == ("fill", "")
    assert counted["pixels"] > 0 and counted["vq"] > 0 and counted["encoder"] > 0  # det_a from its pixels
    assert _bags(out) == bags
    # each entry is the one a first run with the store wrote (bitwise: same batch size, see SETTINGS)
    for sid in ("det_a", "det_b"):
        got, want = _entry_arrays(store, sid), _entry_arrays(store0, sid)
        assert got.keys() == want.keys() and "m0/latent" in got and "m2/emb/uni" in got
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        a, b = inspect_entry(store, sid).record, inspect_entry(store0, sid).record
        assert {k: v for k, v in a.items() if k not in ("write_id", "created")} == {
            k: v for k, v in b.items() if k not in ("write_id", "created")
        }

    # nothing left to do: both slides skipped, no pixel read
    counted.clear()
    summary = _run(small_slides, out, store=str(store))
    assert [r.status for r in summary.results] == ["skipped", "skipped"] and counted["pixels"] == 0

    # the next recipes read the filled store: the UNet only
    counted.clear()
    summary = _run(small_slides, out, store=str(store), **{"features.recipes": RECIPES[:1]})
    assert summary.ok and [r.written for r in summary.results] == [["t50"], ["t50"]], summary.report()
    assert [r.store for r in summary.results] == ["read", "read"]
    assert calls_of(counted) == {"pixels": 0, "vq": 0, "encoder": 0}
    assert {k: v for k, v in _bags(out).items() if k in bags} == bags


def test_complete_bags_and_a_store_of_another_tiling_is_one_line(stored, small_slides, tmp_path):
    """Complete bags and an entry of another tiling under the slide's id: one line, nothing touched."""
    out0, store0 = stored
    only_b = _one(small_slides, "det_b", tmp_path)
    out, store = tmp_path / "out", tmp_path / "store"
    _run(only_b, out, **{"tissue.min_tissue": 0.4})
    shutil.copytree(store0, store)  # det_b's entry at min_tissue 0.5
    bags, entry = _bags(out), _digest(store)
    (r,) = _run(only_b, out, store=str(store), **{"tissue.min_tissue": 0.4}).results
    assert r.status == "failed" and "\n" not in r.error and r.error.startswith("StoreMismatchError: ")
    assert "min_tissue: 0.5 -> 0.4" in r.error and "overwrite=true" in r.error
    assert _bags(out) == bags and _digest(store) == entry


@pytest.fixture
def small_disk(tmpfs):
    """A 4 MB tmpfs (unmounted afterwards); skipped where mounting is refused (needs root)."""
    return tmpfs(4)


def _leave_free(disk: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``disk``."""
    from zoomfeat.runtime.disk import free_bytes

    filler = disk / "filler.bin"
    filler.write_bytes(b"")
    filler.write_bytes(b"\0" * max(0, free_bytes(disk) - leave))
    return filler


def test_free_space_check_counts_the_store_entry(small_slides, tmp_path, small_disk):
    """The check before a slide counts its store entry: on the store's own file system, or with the
    bags when both share one; one line naming the directory, the bytes and what to do; nothing of
    the slide published."""
    from zoomfeat.runtime.disk import DiskFullError
    from zoomfeat.tilestore import inspect_entry

    only_a = _one(small_slides, "det_a", tmp_path)
    # det_a's entry: 8 latents of 3 x 64 x 64 float32 (393 kB) and its embeddings; its bags ~10 kB.
    # 1 MB is kept free beyond what a unit needs (runtime/disk.py MARGIN_BYTES): 1.2 MB free fits
    # the bags, not the entry
    store = small_disk / "store"
    filler = _leave_free(small_disk, 1_200_000)
    out = tmp_path / "out"
    for where, out_dir, what, instead in (
        ("the store's file system", out, "det_a's tile-store entry", "another store dir"),
        ("one file system", small_disk / "out", "det_a's bags and tile-store entry", "another out_dir or store dir"),
    ):  # fmt: skip
        with pytest.raises(DiskFullError) as err:
            _run(only_a, out_dir, store=str(store))
        msg = str(err.value)
        named = store if out_dir == out else out_dir
        assert "\n" not in msg and msg.startswith(
            f"{named}: not enough free space for {what} (needs about 1."
        ), where
        assert f"choose {instead}, then rerun the same command" in msg and "MB free)" in msg
        assert not list(out_dir.rglob("*.h5")) and not [p for p in small_disk.rglob("*") if ".tmp-" in p.name]
        assert inspect_entry(store, "det_a").state == "absent"
    # space freed: the same command writes the bags and the entry
    filler.unlink()
    assert _run(only_a, out, store=str(store)).ok
    entry = inspect_entry(store, "det_a")
    assert entry.state == "complete" and list(out.rglob("det_a.h5"))
    # the count is the entry's array bytes: its files hold them plus HDF5's own (measured ~33 kB,
    # within the 1 MB margin)
    from zoomfeat.tilestore import StoreReader, StoreWriter

    writer = StoreWriter(tmp_path / "count", "det_a", key=entry.record, grid=StoreReader(entry).grid(),
                         latent_shape=tuple(entry.record["latent_shape"]))  # fmt: skip
    writer.discard()
    size = sum(p.stat().st_size for p in entry.paths.values())
    assert writer.expected_bytes < size < writer.expected_bytes + 100_000
