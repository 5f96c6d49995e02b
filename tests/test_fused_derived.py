"""Fused sets without files: every reader derives ``concat(f20[i], f5[parent_idx[i]])`` from the
family's 20x and 5x bags, bitwise equal to the fused file's rows (float16 and float32 bags), through
``open_bag``, ``BagDataset``, the benchmark and the exports; a missing, damaged or mismatched part
is one line naming the files."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from zoomfeat.bags import (
    BagDataset,
    FusedPartsError,
    bag_exists,
    bag_path,
    fused_parts,
    is_bag_dir,
    is_derived,
    list_bags,
    open_bag,
    open_checked_bag,
    read_attrs,
    stored_dtype,
    write_bag,
)
from zoomfeat.interop.mirrors import export_bags, find_feature_sets
from zoomfeat.mil.sources import (
    available_sets,
    derived_sets,
    expand_feature_sets,
    load_feature_set,
    marked_sets,
    resolve_source,
)

SLIDES = ("fz_a", "fz_b")
FUSED = "uni_fused"


def _bits(x: np.ndarray) -> np.ndarray:
    """The raw bits of a float array: equality of these is bitwise equality (NaN and -0 included)."""
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def _without_fused(out: Path, dest: Path) -> Path:
    """A copy of an extraction ``out`` with every fused set directory removed (what
    ``bags.fused=derived`` leaves: the 20x and 5x sets only)."""
    shutil.copytree(out, dest)
    for d in dest.glob("*x_*px_*px_overlap/features_*_fused"):
        shutil.rmtree(d)
    return dest


@pytest.fixture(scope="module")
def extracted(synthetic_slide_factory, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """``{dtype: {"file": out_dir, "derived": out_dir}}``: two small slides (3 parents, 9 kept 20x
    tiles) extracted for real (tiny encoder, ``zoomldm=false``) with ``bags.dtype`` float16 and
    float32; ``derived`` is a copy without the fused directories; ``float16`` also has
    ``option``: the same slides extracted with ``bags.fused=derived``."""
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.runner import extract_slides
    from zoomfeat.slide.manifest import discover

    src = tmp_path_factory.mktemp("fused_slides")
    for name, width, seed in ((SLIDES[0], 2048, 0), (SLIDES[1], 1024, 1)):
        p = synthetic_slide_factory(
            name, width=width, height=1024, mpp=0.5, levels=2, seed=seed, tissue_fraction=0.3
        )
        shutil.copy(p, src / p.name)
    root = tmp_path_factory.mktemp("fused_runs")

    def extract(out: Path, **bags: str) -> Path:
        cfg = ExtractConfig.from_kwargs(
            model="tiny", encoder="tiny", zoomldm=False, progress=False, num_workers=0,
            **{"tissue.min_tissue": 0.5, **{f"bags.{k}": v for k, v in bags.items()}},
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = extract_slides(discover([src]), out, cfg)
        assert summary.ok, summary.report()
        return out

    runs = {}
    for dtype in ("float16", "float32"):
        out = extract(root / f"{dtype}_file", dtype=dtype)
        runs[dtype] = {"file": out, "derived": _without_fused(out, root / f"{dtype}_derived")}
    runs["float16"]["option"] = extract(root / "float16_option", dtype="float16", fused="derived")
    return runs


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_open_bag_derives_the_fused_files_rows_bitwise(extracted, dtype):
    file_root, derived_root = extracted[dtype]["file"], extracted[dtype]["derived"]
    for slide in SLIDES:
        stored, derived = bag_path(file_root, FUSED, slide), bag_path(derived_root, FUSED, slide)
        assert stored.is_file() and not derived.exists() and is_derived(derived) and bag_exists(derived)
        assert stored_dtype(derived) == stored_dtype(stored) == np.dtype(dtype)
        for read_as in (np.float32, np.float16):
            want, got = open_bag(stored, read_as), open_bag(derived, read_as)
            assert got.features.dtype == want.features.dtype == read_as
            assert got.features.shape == want.features.shape and len(got) > 0
            np.testing.assert_array_equal(_bits(got.features), _bits(want.features))
            np.testing.assert_array_equal(got.coords, want.coords)
            np.testing.assert_array_equal(got.parent_idx, want.parent_idx)
            assert got.coords_attrs == want.coords_attrs
        # the fused file's attributes (config hash, slide, split, description), plus where the rows came from
        parts = fused_parts(derived)
        assert parts is not None
        extra = {k: v for k, v in got.attrs.items() if want.attrs.get(k) != v}
        assert extra == {"derived_from": json.dumps([str(parts.x20), str(parts.x5)])}
        assert read_attrs(derived) == got.attrs
        checked = open_checked_bag(derived, context="x: ")
        np.testing.assert_array_equal(checked.features, open_bag(stored).features)


def test_extraction_with_bags_fused_derived_reads_as_the_fused_files(extracted):
    """``bags.fused=derived`` writes no fused file; every reader gives the rows a ``bags.fused=file``
    run wrote (same slides, config and thread count: the tiny encoder's features are bitwise
    reproducible across runs), and the set is listed as derived."""
    file_root, option_root = extracted["float16"]["file"], extracted["float16"]["option"]
    assert not list(option_root.rglob("features_*_fused")) and list(file_root.rglob("features_*_fused"))
    assert available_sets(option_root) == ["uni_20x", "uni_5x", "uni_fused"]
    assert marked_sets(option_root) == ["uni_20x", "uni_5x", "uni_fused (derived)"]
    for slide in SLIDES:
        want, got = open_bag(bag_path(file_root, FUSED, slide)), open_bag(bag_path(option_root, FUSED, slide))
        np.testing.assert_array_equal(_bits(got.features), _bits(want.features))
        np.testing.assert_array_equal(got.coords, want.coords)
        assert (
            got.attrs["config_hash"] == want.attrs["config_hash"]
            and got.attrs["split"] == want.attrs["split"]
        )
    ds = BagDataset(resolve_source(option_root, FUSED))
    assert ds.slide_ids == list(SLIDES) and ds[0]["X"].shape[1] == 64


def test_derived_sets_are_listed_and_marked(extracted):
    file_root, derived_root = extracted["float16"]["file"], extracted["float16"]["derived"]
    assert available_sets(derived_root) == available_sets(file_root) == ["uni_20x", "uni_5x", "uni_fused"]
    assert derived_sets(derived_root) == ["uni_fused"] and derived_sets(file_root) == []
    assert marked_sets(derived_root) == ["uni_20x", "uni_5x", "uni_fused (derived)"]
    assert expand_feature_sets(["*_fused"], derived_root) == ["uni_fused"]
    source = resolve_source(derived_root, FUSED)
    assert source == derived_root / "20x_256px_0px_overlap" / "features_uni_fused" and not source.exists()
    assert is_bag_dir(source) and available_sets(source) == ["uni_fused"]
    assert list(list_bags(source)) == list(list_bags(resolve_source(file_root, FUSED))) == list(SLIDES)
    sets = {fs.name: fs for fs in find_feature_sets(derived_root)}
    assert sorted(sets) == ["uni_20x", "uni_5x", "uni_fused"]
    assert sets["uni_fused"].derived and not sets["uni_20x"].derived
    assert not any(fs.derived for fs in find_feature_sets(file_root))
    # a 20x set without its 5x set derives nothing
    lone = derived_root.parent / "lone"
    shutil.copytree(derived_root / "20x_256px_0px_overlap", lone / "20x_256px_0px_overlap")
    assert available_sets(lone) == ["uni_20x"] and derived_sets(lone) == []


def test_bag_dataset_and_the_benchmark_loader_read_the_same_rows(extracted, tmp_path):
    file_root, derived_root = extracted["float16"]["file"], extracted["float16"]["derived"]
    labels = pd.DataFrame({"slide_id": list(SLIDES), "case_id": list(SLIDES), "label": [0, 1]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    file_dir, derived_dir = resolve_source(file_root, FUSED), resolve_source(derived_root, FUSED)
    want = BagDataset(file_dir, tmp_path / "labels.csv")
    for preload in (False, True):
        got = BagDataset(derived_dir, tmp_path / "labels.csv", preload=preload)
        assert len(got) == len(want) == 2
        for i in range(2):
            a, b = want[i], got[i]
            assert a["slide_id"] == b["slide_id"] and int(a["Y"]) == int(b["Y"])
            assert torch.equal(a["X"], b["X"]) and torch.equal(a["coords"], b["coords"])
    for in_memory in (True, False):
        a, b = (
            load_feature_set(src, FUSED, cohort=labels, in_memory=in_memory, dtype="float16", progress=False)
            for src in (file_dir, derived_dir)
        )
        assert a.in_memory == b.in_memory == in_memory and a.dim == b.dim == 64
        assert a.provenance == b.provenance and a.provenance["config_hash"] != "unknown"
        np.testing.assert_array_equal(a.n_instances, b.n_instances)
        for i in range(len(a)):
            np.testing.assert_array_equal(_bits(a.features(i)), _bits(b.features(i)))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_exports_write_the_same_mirrors(extracted, dtype, tmp_path):
    roots = extracted[dtype]
    for to in ("clam", "stamp", "slideflow"):
        results = {
            how: export_bags(root, to, sets=[FUSED], dest=tmp_path / how / to) for how, root in roots.items()
        }
        assert f"{FUSED} (derived from its 20x and 5x bags): 2 slide(s)" in results["derived"].report()
        assert "derived" not in results["file"].report()
        a, b = (tmp_path / how / to / FUSED for how in ("file", "derived"))
        for slide in SLIDES:
            if to in ("clam", "slideflow"):
                pt = "pt_files/" if to == "clam" else ""
                x, y = (torch.load(d / f"{pt}{slide}.pt", weights_only=True) for d in (a, b))
                assert x.dtype == y.dtype == torch.float32 and torch.equal(x, y)
            if to == "clam":  # a link to the fused file, or the derived rows as a file of their own
                assert (a / "h5_files" / f"{slide}.h5").is_symlink()
                assert not (b / "h5_files" / f"{slide}.h5").is_symlink()
                x, y = (open_bag(d / "h5_files" / f"{slide}.h5", np.float16) for d in (a, b))
                np.testing.assert_array_equal(_bits(x.features), _bits(y.features))
                np.testing.assert_array_equal(x.coords, y.coords)
            if to == "stamp":  # feats: an external link to the fused file, or a dataset
                with h5py.File(a / f"{slide}.h5") as fa, h5py.File(b / f"{slide}.h5") as fb:
                    assert fa["feats"].dtype == fb["feats"].dtype == np.dtype(dtype)
                    np.testing.assert_array_equal(_bits(fa["feats"][()]), _bits(fb["feats"][()]))
                    np.testing.assert_array_equal(fa["coords"][()], fb["coords"][()])
                    assert dict(fa.attrs) | {"source_bag": ""} == dict(fb.attrs) | {"source_bag": ""}
            if to == "slideflow":
                x, y = (np.load(d / f"{slide}.index.npz")["arr_0"] for d in (a, b))
                np.testing.assert_array_equal(x, y)


def _bench_cohort(root: Path, *, fused_files: bool) -> pd.DataFrame:
    """24 slides (12 cases, planted key instances) as a family's 20x and 5x bags, float16, each 20x
    tile under one of ceil(n/4) parents (coords, parent_idx), plus the fused file when asked."""
    from mil.bagfactory import COORDS_ATTRS, planted_bags

    table, feats = planted_bags(n_cases=12, slides_per_case=2, dim=12, seed=7)
    rng = np.random.default_rng(1)
    a20 = {**COORDS_ATTRS, "patch_size_level0": 256}
    a5 = {**COORDS_ATTRS, "patch_size_level0": 1024, "target_magnification": 5}
    for slide, x in feats.items():
        parent_idx = np.arange(len(x)) // 4
        c5 = np.stack([np.arange(parent_idx.max() + 1) * 1024, np.zeros(parent_idx.max() + 1)], 1)
        c20 = c5[parent_idx] + np.stack([(np.arange(len(x)) % 4) * 256, np.zeros(len(x))], 1)
        x5 = rng.normal(size=(len(c5), 5)).astype(np.float32)
        attrs = {"slide_id": slide, "config_hash": "c0ffee", "complete": True}
        write_bag(
            bag_path(root, "fam_20x", slide), x, c20, a20, attrs=attrs, parent_idx=parent_idx, dtype="float16"
        )
        write_bag(bag_path(root, "fam_5x", slide), x5, c5, a5, attrs=attrs, dtype="float16")
        if fused_files:
            fused = np.concatenate([x, x5[parent_idx]], axis=1)
            write_bag(bag_path(root, "fam_fused", slide), fused, c20, a20, attrs=attrs, parent_idx=parent_idx,
                      dtype="float16")  # fmt: skip
    table.to_csv(root / "labels.csv", index=False)
    return table


def test_the_benchmark_gives_the_same_results_with_and_without_fused_files(tmp_path):
    from zoomfeat.bench import run
    from zoomfeat.cli import hydra_main

    small = [
        "mil.hidden=[16]",
        "mil.att_dim=8",
        "mil.epochs=2",
        "mil.min_epochs=1",
        "progress=false",
        "threads=1",
    ]
    out = {}
    for how in ("file", "derived"):
        root = tmp_path / f"bags_{how}"
        _bench_cohort(root, fused_files=how == "file")
        assert (root / "20x_256px_0px_overlap" / "features_fam_fused").is_dir() == (how == "file")
        out[how] = tmp_path / f"bench_{how}"
        argv = ["task=brca", f"task.labels={root / 'labels.csv'}", f"task.bags={root}", "feature_sets=[fam_fused]",
                "cv.folds=3", f"out_dir={out[how]}", *small]  # fmt: skip
        hydra_main("bench", run, argv=argv, inputs_key=None)
    folds = {how: pd.read_csv(d / "folds.csv") for how, d in out.items()}
    assert set(folds["derived"]["feature_set"]) == {"fam_fused"} and len(folds["derived"]) == 3
    pd.testing.assert_frame_equal(folds["file"].drop(columns="seconds", errors="ignore"),
                                  folds["derived"].drop(columns="seconds", errors="ignore"))  # fmt: skip
    preds = {how: pd.read_csv(d / "predictions.csv") for how, d in out.items()}
    pd.testing.assert_frame_equal(preds["file"], preds["derived"])


# ------------------------------------------------------------------ parts missing, damaged, mismatched
def _fresh(extracted: dict, tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A copy of the float32 run without fused files: (root, fused path, 20x part, 5x part) of slide b."""
    root = tmp_path / "bags"
    shutil.copytree(extracted["float32"]["derived"], root)
    fused = bag_path(root, FUSED, SLIDES[1])
    parts = fused_parts(fused)
    assert parts is not None
    return root, fused, parts.x20, parts.x5


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def _edit(path: Path, fn) -> None:
    with h5py.File(path, "r+") as f:
        fn(f)


def _replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    del f[name]
    f.create_dataset(name, data=data)


BAD_PARTS = {
    "5x part missing": (lambda r, p20, p5: p5.unlink(), ["the 5x part", "is missing", "bags.fused=file"]),
    "20x part truncated": (
        lambda r, p20, p5: p20.write_bytes(p20.read_bytes()[:2000]),
        ["20x part", "is damaged", "re-extract the slide"],
    ),
    "5x part unfinished": (
        lambda r, p20, p5: _edit(p5, lambda f: f.attrs.__setitem__("complete", False)),
        ["the 5x part is unfinished"],
    ),
    "5x part of another slide": (
        lambda r, p20, p5: shutil.copy(bag_path(r, "uni_5x", SLIDES[0]), p5),
        ["different slides", f"slide_id '{SLIDES[1]}' vs '{SLIDES[0]}'"],
    ),
    "5x part of another config": (
        lambda r, p20, p5: _edit(p5, lambda f: f.attrs.__setitem__("config_hash", "0123456789abcdef")),
        ["different configs", "config_hash"],
    ),
    "parent_idx beyond the 5x rows": (
        lambda r, p20, p5: _edit(p20, lambda f: _replace(f, "parent_idx", f["parent_idx"][()] + 5)),
        ["parent_idx spans 5..5 but the 5x part has 1 row(s)"],
    ),
    "5x tiles moved": (
        lambda r, p20, p5: _edit(p5, lambda f: f["coords"].__setitem__(slice(None), f["coords"][()] + 4096)),
        ["20x tile(s) lie outside the 5x row parent_idx names"],
    ),
    "no parent_idx": (
        lambda r, p20, p5: _edit(p20, lambda f: f.__delitem__("parent_idx")),
        ["the 20x part has no parent_idx"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_PARTS))
def test_bad_parts_are_one_line_naming_the_files(extracted, tmp_path, case):
    root, fused, p20, p5 = _fresh(extracted, tmp_path)
    damage, phrases = BAD_PARTS[case]
    damage(root, p20, p5)
    with pytest.raises(FusedPartsError) as err:
        open_bag(fused)
    text = _one_line(err.value)
    assert str(fused) in text and all(ph in text for ph in phrases), text
    assert str(p5 if "5x part" in phrases[0] and "missing" in text else p20) in text
    # every reader says the same, with its own context
    with pytest.raises(FusedPartsError, match=r"^export of 'uni_fused': fused bag "):
        open_checked_bag(fused, context="export of 'uni_fused': ")
    with pytest.raises(FusedPartsError):
        BagDataset(fused.parent)[1]
    with pytest.raises(FusedPartsError):
        export_bags(root, "clam", sets=[FUSED], dest=tmp_path / "m")
    assert bag_path(root, FUSED, SLIDES[0]).parent.exists() is False  # nothing was written among the bags


def test_a_fused_file_older_than_its_parts_is_refused(extracted, tmp_path):
    """A family re-extracted with ``bags.fused=derived`` (new config hash on its 20x and 5x bags)
    next to a fused file of the earlier run: the checked readers refuse the stale file in one line;
    deleting it lets them derive the rows."""
    root = tmp_path / "bags"
    shutil.copytree(extracted["float32"]["file"], root)
    fused = bag_path(root, FUSED, SLIDES[1])
    parts = fused_parts(fused)
    assert parts is not None
    for part in (parts.x20, parts.x5):
        _edit(part, lambda f: f.attrs.__setitem__("config_hash", "feedfacefeedface"))
    old = open_bag(fused).attrs["config_hash"]
    with pytest.raises(FusedPartsError) as err:
        open_checked_bag(fused, context="feature set 'uni_fused': ")
    text = _one_line(err.value)
    assert text.startswith(f"feature set 'uni_fused': fused bag {fused} was written with config_hash {old!r}")
    assert f"its 20x bag {parts.x20} with 'feedfacefeedface'" in text and "delete it" in text
    with pytest.raises(FusedPartsError):
        BagDataset(fused.parent)[1]
    fused.unlink()
    derived = open_checked_bag(fused)
    assert derived.attrs["config_hash"] == "feedfacefeedface"
    np.testing.assert_array_equal(
        derived.features, open_bag(bag_path(extracted["float32"]["file"], FUSED, SLIDES[1])).features
    )


def test_the_export_command_prints_one_line_for_a_missing_part(extracted, tmp_path, capsys, monkeypatch):
    from zoomfeat.cli import hydra_main
    from zoomfeat.export import run

    root, fused, _, p5 = _fresh(extracted, tmp_path)
    p5.unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        hydra_main("export", run, argv=[str(root), "to=stamp", f"sets=[{FUSED}]", f"dest={tmp_path / 'm'}"])
    assert exit_info.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoomfeat export: error:"), lines
    assert f"fused bag {fused} has no file and cannot be derived: the 5x part {p5} is missing" in lines[0]
