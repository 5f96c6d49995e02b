"""``preset=paper``: the ZoomLDM paper's MIL table from one bench command (zoomfeat.mil.presets).

A synthetic BRCA-like task with real HDF5 bags in zoomfeat.extract's layout for some of the
preset's sets (UNI, Phikon, ZoomLDM and one newer encoder; no CTransPath), run through the
bench's command line (in-process, as tests/test_bench.py does) with tiny MIL settings.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from zoomfeat.bench import run
from zoomfeat.cli import hydra_main
from zoomfeat.encoders.registry import ENCODERS
from zoomfeat.mil.bagset import BenchWarning
from zoomfeat.mil.benchmark import run_benchmark
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection, load_bench_config
from zoomfeat.mil.presets import NEWER_ENCODERS, PRESETS, paper_table
from zoomfeat.runtime.errors import BagError, ConfigError

from .bagfactory import planted_bags, write_bags

SMALL = ["mil.hidden=[8]", "mil.att_dim=8", "mil.epochs=3", "mil.min_epochs=1", "mil.warmup=0",
         "progress=false", "threads=1", "save_attention=false", "data.dtype=float32"]  # fmt: skip
#: bag sets written, by TRIDENT directory (ctranspath_5x and most newer encoders left out)
WRITTEN = {
    "20x_256px_0px_overlap": ["uni_20x", "phikon_20x", "zoomldm_20x", "zoomldm_fused", "conch_v15_20x", "conch_v15_fused"],
    "5x_256px_0px_overlap": ["zoomldm_5x"],
}  # fmt: skip
PAPER_LABELS = [
    "Phikon (20x)",
    "UNI (20x)",
    "CTransPath (5x)",
    "ZoomLDM (20x)",
    "ZoomLDM (5x)",
    "ZoomLDM (20x+5x)",
]
RUN_ORDER = [
    "phikon_20x",
    "uni_20x",
    "zoomldm_20x",
    "zoomldm_5x",
    "zoomldm_fused",
    "conch_v15_20x",
    "conch_v15_fused",
]


def bench(*args):
    return hydra_main("bench", run, argv=list(args), inputs_key=None)


def _write_task(root, sets):
    """Labels + bags of ``sets`` under ``root`` in zoomfeat.extract's layout; each set is the planted
    signal plus its own Gaussian noise (so the sets score differently)."""
    table, feats = planted_bags(n_cases=24, slides_per_case=1, dim=8, seed=5)
    for k, (mag_dir, names) in enumerate(WRITTEN.items()):
        for j, name in enumerate(n for n in names if n in sets):
            rng = np.random.default_rng(10 * k + j)
            noisy = {
                s: (x + rng.normal(scale=0.5 + j, size=x.shape)).astype(np.float32) for s, x in feats.items()
            }
            write_bags(root / mag_dir, name, noisy)
    table.to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """One ``preset=paper`` run on the CLI: its out_dir, stdout and BenchWarnings."""
    root = _write_task(tmp_path_factory.mktemp("paper_bags"), {s for v in WRITTEN.values() for s in v})
    out = root / "out"
    stdout = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
        warnings.simplefilter("always")
        bench("task=brca", f"task.labels={root / 'labels.csv'}", f"task.bags={root}", "preset=paper",
              "cv.folds=3", f"out_dir={out}", *SMALL)  # fmt: skip
    bench_warnings = [str(w.message) for w in caught if issubclass(w.category, BenchWarning)]
    return {"root": root, "out": out, "stdout": stdout.getvalue(), "warnings": bench_warnings}


def test_the_paper_table_has_the_papers_rows_then_the_newer_encoders(paper_run):
    out = paper_run["out"]
    table = pd.read_csv(out / "paper_table.csv")
    assert table["label"].tolist() == PAPER_LABELS + ["CONCH v1.5 (20x)", "CONCH v1.5 (20x+5x)"]
    assert table["group"].tolist() == ["paper"] * 6 + ["newer encoders"] * 2
    assert table.set_index("label").loc["CTransPath (5x)", "status"] == "no bags"
    assert (table.loc[table["feature_set"] != "ctranspath_5x", "status"] == "run").all()
    # the run itself: the preset's sets with bags, in the table's order, uni_20x the paired baseline
    folds = pd.read_csv(out / "folds.csv")
    assert list(dict.fromkeys(folds["feature_set"])) == RUN_ORDER
    assert json.loads((out / "run.json").read_text())["feature_sets"] == RUN_ORDER
    assert set(pd.read_csv(out / "paired.csv")["baseline"]) == {"uni_20x"}
    # printed at the end of the run: the Markdown file, last
    md = (out / "paper_table.md").read_text()
    assert paper_run["stdout"].rstrip().endswith(md.rstrip())
    lines = md.splitlines()
    first_cells = [
        line.split("|")[1].strip() for line in lines if line.startswith("| ") and "---" not in line
    ]
    assert first_cells == ["Features", "*ZoomLDM paper's rows*", *PAPER_LABELS, "*Newer encoders*",
                           "CONCH v1.5 (20x)", "CONCH v1.5 (20x+5x)"]  # fmt: skip


def test_missing_sets_are_one_warning_naming_the_extract_command(paper_run):
    root = paper_run["root"]
    assert len(paper_run["warnings"]) == 1, paper_run["warnings"]
    message = paper_run["warnings"][0]
    assert "ctranspath_5x" in message and "phikon_20x" not in message and "conch" not in message
    assert message.endswith(
        f"make them with: python -m zoomfeat.extract SLIDES out_dir={root} encoders=[uni,ctranspath]"
    )
    assert "encoders=[uni,ctranspath]" in (paper_run["out"] / "paper_table.md").read_text()


def test_table_numbers_are_the_reports_numbers(paper_run):
    out = paper_run["out"]
    table = pd.read_csv(out / "paper_table.csv").set_index("feature_set")
    summary = pd.read_csv(out / "summary.csv").set_index(["feature_set", "metric"])
    paired = pd.read_csv(out / "paired.csv").set_index(["feature_set", "metric"])
    folds = pd.read_csv(out / "folds.csv")
    for fs in RUN_ORDER:
        row = table.loc[fs]
        # same function on the same folds, both written with pandas' round-trip float repr: exact
        for metric in ("auc", "balanced_accuracy"):
            for col in ("mean", "ci_low", "ci_high"):
                assert row[f"{metric}_{col}"] == summary.loc[(fs, metric), col], (fs, metric, col)
        assert row["n_folds"] == summary.loc[(fs, "auc"), "n"] == 3
        # and independently: the mean of folds.csv (3 float64 values, summed in another order:
        # |error| <= 3 * 2^-53 relative; 1e-12 is far above it and far below any real difference)
        assert row["auc_mean"] == pytest.approx(
            folds.loc[folds["feature_set"] == fs, "auc"].mean(), rel=1e-12
        )
        if fs == "uni_20x":
            assert math.isnan(row["auc_diff_vs_baseline"]) and math.isnan(row["p_corrected_t"])
            continue
        for ours, theirs in (("auc_diff_vs_baseline", "diff_mean"), ("p_corrected_t", "p_corrected_t"),
                             ("p_wilcoxon", "p_wilcoxon")):  # fmt: skip
            assert row[ours] == paired.loc[(fs, "auc"), theirs] or (
                math.isnan(row[ours]) and math.isnan(paired.loc[(fs, "auc"), theirs])
            ), (fs, ours)
    assert table["auc_mean"].nunique() > 1  # the sets really differ (the table is not one row repeated)
    # the Markdown prints the same figures in percent
    md = (out / "paper_table.md").read_text()
    uni = table.loc["uni_20x"]
    uni_line = next(line for line in md.splitlines() if line.startswith("| UNI (20x) |"))
    assert (
        f"| {100 * uni['auc_mean']:.2f} [{100 * uni['auc_ci_low']:.2f}–{100 * uni['auc_ci_high']:.2f}] |"
        in uni_line
    )
    fused = table.loc["zoomldm_fused"]
    fused_line = next(line for line in md.splitlines() if line.startswith("| ZoomLDM (20x+5x) |"))
    assert f"| {100 * fused['auc_diff_vs_baseline']:+.2f} |" in fused_line


def test_published_column(paper_run):
    out = paper_run["out"]
    table = pd.read_csv(out / "paper_table.csv").set_index("label")["published_auc_pct"]
    assert table["UNI (20x)"] == 94.09 and table["ZoomLDM (20x+5x)"] == 94.91
    assert table.drop(["UNI (20x)", "ZoomLDM (20x+5x)"]).isna().all()  # not in our references: empty
    md_rows = {line.split("|")[1].strip(): line for line in (out / "paper_table.md").read_text().splitlines()
               if line.startswith("| ")}  # fmt: skip
    assert md_rows["UNI (20x)"].endswith("| 94.09 |") and md_rows["ZoomLDM (20x+5x)"].endswith("| 94.91 |")
    assert md_rows["Phikon (20x)"].endswith("|  |") and md_rows["CTransPath (5x)"].endswith(
        "| no bags | | | | |  |"
    )
    # the same run's folds under the HRD task's name: the paper's HRD figures; another task: none
    folds = pd.read_csv(out / "folds.csv")
    hrd = paper_table(folds, "paper", "hrd").set_index("label")["published_auc_pct"]
    assert hrd["UNI (20x)"] == 81.79 and hrd["ZoomLDM (20x+5x)"] == 88.03
    assert paper_table(folds, "paper", "custom")["published_auc_pct"].isna().all()


def test_preset_rows_name_registry_encoders():
    rows = PRESETS["paper"].rows
    encoders = {r.feature_set.rsplit("_", 1)[0] for r in rows} - {"zoomldm"}
    assert encoders <= set(ENCODERS), encoders - set(ENCODERS)
    assert {e for e, _ in NEWER_ENCODERS} | {"phikon", "uni", "ctranspath"} == encoders
    assert [r.feature_set for r in rows[6:9]] == ["phikon_v2_20x", "phikon_v2_5x", "phikon_v2_fused"]


def test_config_rule_preset_chooses_the_sets(tmp_path, capsys, monkeypatch):
    task = {"name": "brca", "bags": "x"}
    assert load_bench_config({"task": task, "preset": "paper"}).preset == "paper"
    with pytest.raises(ConfigError, match=r"unknown preset 'paperr': use one of paper"):
        load_bench_config({"task": task, "preset": "paperr"})
    with pytest.raises(ConfigError, match="preset=paper chooses the feature sets itself"):
        load_bench_config({"task": task, "preset": "paper", "feature_sets": ["uni_20x", "zoomldm_fused"]})
    with pytest.raises(ConfigError, match="preset=paper compares every set with uni_20x"):
        load_bench_config({"task": task, "preset": "paper", "baseline": "phikon_20x"})
    # on the command line: one line, exit status 2
    monkeypatch.delenv("ZOOMFEAT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        bench(
            "task=brca",
            "task.bags=x",
            "preset=paper",
            "feature_sets=[uni_20x]",
            f"out_dir={tmp_path}",
            *SMALL,
        )
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        "zoomfeat bench: error: preset=paper chooses the feature sets itself (ZoomLDM paper's MIL table "
        "(Yellapragada et al., CVPR 2025)); leave feature_sets out, or drop preset= to benchmark your own list"
    ]


def _config(root, out):
    return BenchmarkConfig(
        TaskSection(name="brca", labels=str(root / "labels.csv"), bags=str(root), label_map={"IDC": 0, "ILC": 1}),
        preset="paper", out_dir=str(out), cv=CVSection(folds=2), mil=MILConfig(hidden=[4], epochs=1),
        progress=False, save_attention=False,
    )  # fmt: skip


def test_no_baseline_bags_is_one_bag_error(tmp_path):
    only_zoomldm = _write_task(tmp_path / "z", {"zoomldm_20x", "zoomldm_fused", "zoomldm_5x"})
    with pytest.raises(BagError) as err:
        run_benchmark(_config(only_zoomldm, tmp_path / "o1"))
    message = str(err.value)
    assert message.startswith(f"preset=paper: no uni_20x bags under {only_zoomldm} (the baseline, UNI (20x))")
    assert "bags of zoomldm_20x, zoomldm_5x, zoomldm_fused" in message
    assert message.endswith(
        f"make them with: python -m zoomfeat.extract SLIDES out_dir={only_zoomldm} encoders=[uni]"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "labels.csv").write_text((only_zoomldm / "labels.csv").read_text())
    with pytest.raises(BagError, match=r"it found no bags of any of its feature sets \(sets there: none\)"):
        run_benchmark(_config(empty, tmp_path / "o2"))
    absent = BenchmarkConfig(
        TaskSection(name="brca", labels=str(empty / "labels.csv"), bags=str(tmp_path / "absent")),
        preset="paper", out_dir=str(tmp_path / "o3"), progress=False,
    )  # fmt: skip
    with pytest.raises(BagError, match=r"no bag source at .*absent \(task.bags=\)"):
        run_benchmark(absent)
