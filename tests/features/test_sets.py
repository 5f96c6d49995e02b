"""bags.sets and bags.fused: only the requested bag files are written, and only the tiles they need
are embedded (zoomfeat.features.families.Work, decided once by the plan).

Real slides (the small synthetic Aperio slides of conftest.py), the tiny models, real HDF5 bags.
The model calls are counted by wrapping the pass's ``FeatureModels.embed`` and ``contexts`` (one
conditioning grid per ZoomLDM tile) on the instance (the algorithm has no test flag). Runs that
compare ZoomLDM rows bitwise use ``batch_size=1``: every model call then sees one tile, so a row can differ only if what is
computed for that tile differs (across batch sizes the CPU kernels may change the last float32
bits, conftest.py ``batch_atol``); the encoder is bitwise equal across batch sizes (conftest.py).
"""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.features.conftest import TINY
from zoomfeat.bags import open_bag, patches_path
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.families import Family, Work, plan_work
from zoomfeat.features.pipeline import Extractor
from zoomfeat.runtime.errors import ConfigError

SLIDE = "det_a"  # 2 kept 5x parents with 2 + 4 kept 20x children (32 children, 26 background)
N_PARENTS, N_KEPT = 2, 6
ALL = ("20x", "5x", "fused")


class Counted:
    """An :class:`Extractor` whose model calls are counted: tiles per embedding job, ZoomLDM tiles."""

    def __init__(self, **kwargs: Any) -> None:
        self.ex = Extractor(ExtractConfig.from_kwargs(**TINY, num_workers=0, **kwargs))
        self.embedded: Counter[str] = Counter()
        self.zoomldm = 0
        models = self.ex.models
        embed, contexts = models.embed, models.contexts

        def counting_embed(images, job=None):
            self.embedded[job] += len(images)
            return embed(images, job)

        def counting_contexts(grids, mags):  # one conditioning grid per ZoomLDM tile
            self.zoomldm += sum(len(g) for g in grids)
            return contexts(grids, mags)

        models.embed, models.contexts = counting_embed, counting_contexts

    def extract(self, slide: Path, out: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.ex.extract(slide, out)


def _files(out: Path) -> set[str]:
    """The feature sets written (directory names less ``features_``)."""
    return {p.parent.name.removeprefix("features_") for p in out.rglob(f"features_*/{SLIDE}.h5")}


def _bag(out: Path, name: str):
    return open_bag(next(out.rglob(f"features_{name}/{SLIDE}.h5")))


def _sets(families=("zoomldm", "uni"), kinds=ALL) -> set[str]:
    return {f"{f}_{k}" for f in families for k in kinds}


@pytest.fixture(scope="module")
def full_run(small_slides, tmp_path_factory):
    """det_a with every set as files (today's default), batch_size=1: (output dir, counts)."""
    out = tmp_path_factory.mktemp("sets_full")
    run = Counted(batch_size=1)
    assert run.extract(small_slides / f"{SLIDE}.svs", out).status == "done"
    assert _files(out) == _sets()
    return out, run


@pytest.fixture(scope="module")
def run_20x(small_slides, tmp_path_factory):
    """det_a with bags.sets=[20x], batch_size=1: (output dir, counts)."""
    out = tmp_path_factory.mktemp("sets_20x")
    run = Counted(batch_size=1, **{"bags.sets": ["20x"]})
    assert run.extract(small_slides / f"{SLIDE}.svs", out).status == "done"
    return out, run


def test_the_full_run_embeds_every_tile_of_every_kept_parent(full_run):
    _, run = full_run
    assert run.embedded == {
        "uni": 17 * N_PARENTS
    }  # the tiny encoder conditions ZoomLDM and is the uni family
    assert run.zoomldm == N_KEPT + N_PARENTS


def test_20x_alone_writes_20x_files_embeds_only_kept_children_and_equals_the_full_run(full_run, run_20x):
    (ref, _), (out, run) = full_run, run_20x
    assert _files(out) == _sets(kinds=("20x",))
    for mag in (20, 5):  # both coords files (the 20x bag's parent_idx points into the 5x grid)
        assert patches_path(out, SLIDE, mag).is_file()
    # no background child, no 5x tile: the kept children's own 1x1 grids need only themselves
    assert run.embedded == {"uni": N_KEPT} and run.zoomldm == N_KEPT
    for name in ("zoomldm_20x", "uni_20x"):
        a, b = _bag(ref, name), _bag(out, name)
        assert len(b) == N_KEPT and np.abs(b.features).max() > 0.01  # real rows
        np.testing.assert_array_equal(a.features, b.features, err_msg=name)
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_array_equal(a.parent_idx, b.parent_idx)
        assert a.attrs["config_hash"] == b.attrs["config_hash"]  # bags.sets is not in the hash


def test_zoomldm_false_20x_embeds_exactly_the_kept_children(full_run, small_slides, tmp_path, monkeypatch):
    """A plain encoder extractor asked for 20x bags embeds the kept tiles and nothing else (batch_size
    3: pieces of two parents share batches), and no parent region is downsampled to its 5x tile."""
    import zoomfeat.features.data as data

    ref, _ = full_run
    splits: list[bool] = []

    def split(region, *, parent_tile=True):
        splits.append(parent_tile)
        return data.split_parent.__wrapped__(region, parent_tile=parent_tile)

    split.__wrapped__ = data.split_parent  # type: ignore[attr-defined]
    monkeypatch.setattr(data, "split_parent", split)
    run = Counted(batch_size=3, zoomldm=False, **{"bags.sets": ["20x"]})
    assert run.ex.models.model is None
    assert run.extract(small_slides / f"{SLIDE}.svs", tmp_path).status == "done"
    assert _files(tmp_path) == {"uni_20x"}
    assert run.embedded == {"uni": N_KEPT} and run.zoomldm == 0
    assert splits == [False] * N_PARENTS
    np.testing.assert_array_equal(_bag(ref, "uni_20x").features, _bag(tmp_path, "uni_20x").features)


def test_a_separate_conditioning_job_alone_embeds_background_children(full_run, small_slides, tmp_path):
    """features.cond_px=256 conditions ZoomLDM through its own job (cond@256): only that job embeds
    background children (for the 5x grid); the uni family's job embeds kept children and 5x tiles."""
    ref, _ = full_run
    run = Counted(batch_size=3, **{"features.cond_px": 256})
    assert run.ex.models.jobs == ["uni", "cond@256"]
    assert run.extract(small_slides / f"{SLIDE}.svs", tmp_path).status == "done"
    assert run.embedded == {"uni": N_KEPT + N_PARENTS, "cond@256": 16 * N_PARENTS}
    assert run.zoomldm == N_KEPT + N_PARENTS
    for s in ALL:  # the uni family does not depend on cond_px: same rows as the full run's
        np.testing.assert_array_equal(_bag(ref, f"uni_{s}").features, _bag(tmp_path, f"uni_{s}").features)


def test_derived_fused_writes_no_fused_file_and_a_rerun_finds_the_slide_complete(
    full_run, small_slides, tmp_path
):
    ref, _ = full_run
    run = Counted(batch_size=1, **{"bags.fused": "derived"})
    assert run.extract(small_slides / f"{SLIDE}.svs", tmp_path).status == "done"
    assert _files(tmp_path) == _sets(kinds=("20x", "5x"))
    for fam in ("zoomldm", "uni"):
        b20, b5 = _bag(tmp_path, f"{fam}_20x"), _bag(tmp_path, f"{fam}_5x")
        derived = np.concatenate([b20.features, b5.features[b20.parent_idx]], axis=1)
        np.testing.assert_array_equal(derived, _bag(ref, f"{fam}_fused").features, err_msg=fam)
    rerun = Counted(batch_size=1, **{"bags.fused": "derived"})
    result = rerun.extract(small_slides / f"{SLIDE}.svs", tmp_path)
    assert result.status == "skipped" and not rerun.embedded and rerun.zoomldm == 0


def test_adding_sets_later_computes_only_the_missing_ones(full_run, run_20x, small_slides, tmp_path):
    """[20x] -> [20x, 5x]: the 20x files are kept byte for byte, ZoomLDM runs on the 5x tiles only;
    -> [20x, 5x, fused]: only the fused files are written (their rows need both magnifications)."""
    ref, _ = full_run
    out = tmp_path / "out"
    shutil.copytree(run_20x[0], out)
    kept = {p: p.read_bytes() for p in out.rglob(f"features_*/{SLIDE}.h5")}
    add5 = Counted(batch_size=1, **{"bags.sets": ["20x", "5x"]})
    result = add5.extract(small_slides / f"{SLIDE}.svs", out)
    assert result.status == "done" and result.written == ["zoomldm", "uni"]
    assert _files(out) == _sets(kinds=("20x", "5x"))
    assert all(p.read_bytes() == b for p, b in kept.items())
    assert add5.zoomldm == N_PARENTS  # no 20x ZoomLDM row is recomputed
    assert add5.embedded == {"uni": 17 * N_PARENTS}  # the 5x grids (every child) and the uni_5x tiles
    for name in ("zoomldm_5x", "uni_5x"):
        np.testing.assert_array_equal(_bag(ref, name).features, _bag(out, name).features, err_msg=name)
    kept = {p: p.read_bytes() for p in out.rglob(f"features_*/{SLIDE}.h5")}
    add_fused = Counted(batch_size=1)
    assert add_fused.extract(small_slides / f"{SLIDE}.svs", out).status == "done"
    assert _files(out) == _sets() and all(p.read_bytes() == b for p, b in kept.items())
    for name in ("zoomldm_fused", "uni_fused"):
        np.testing.assert_array_equal(_bag(ref, name).features, _bag(out, name).features, err_msg=name)


def _fam(name: str, kind: str, job: str) -> Family:
    return Family(name, kind, {}, "h", job=job)


@pytest.mark.parametrize(
    ("kinds", "work"),
    [
        (ALL, Work(frozenset({"uni", "cond"}), frozenset({"cond"}), frozenset({"uni"}), True, True)),
        (("20x",), Work(frozenset({"uni", "cond"}), frozenset(), frozenset(), True, False)),
        (("5x",), Work(frozenset({"cond"}), frozenset({"cond"}), frozenset({"uni"}), False, True)),
        (("fused",), Work(frozenset({"uni", "cond"}), frozenset({"cond"}), frozenset({"uni"}), True, True)),
    ],
)
def test_plan_work_embeds_what_the_sets_need(kinds, work):
    """The decision alone: a recipe family conditioned by job 'cond', an encoder family 'uni'."""
    fams = {"z": _fam("z", "recipe", "cond"), "uni": _fam("uni", "encoder", "uni")}
    write = {f: tuple(f"{f}_{k}" for k in kinds) for f in fams}
    assert plan_work(write, fams) == work
    assert work.parent_tile == (kinds != ("20x",))  # the 5x tile: embedded, or ZoomLDM's 5x input
    assert Work.full(["uni", "cond"], zoomldm=True) == Work(*[frozenset({"uni", "cond"})] * 3, True, True)
    kept = np.zeros(16, bool)
    kept[[1, 5]] = True
    want = ([1, 5] if "uni" in work.kept else []) + ([16] if "uni" in work.parent else [])
    assert work.slots("uni", kept).tolist() == want
    assert work.slots("cond", kept).tolist() == ([*range(16)] if "cond" in work.background else [1, 5])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"bags.sets": ["20x", "fused"], "bags.fused": "derived"}, r"bags.fused=derived .* add both"),
        ({"bags.sets": ["10x"]}, r"bags.sets must be a non-empty list of distinct 20x \| 5x \| fused"),
        ({"bags.sets": []}, r"bags.sets must be a non-empty list"),
        ({"bags.fused": "link"}, r"bags.fused must be one of file \| derived"),
    ],
)
def test_bad_sets_are_refused_in_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match):
        ExtractConfig.from_kwargs(**TINY, **overrides)
