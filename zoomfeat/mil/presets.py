"""Bench presets: a published table's feature sets, run and laid out as that table (``preset=paper``).

A preset is data: an ordered list of rows (the label as the paper prints it, the bag set that
``zoomfeat.extract`` writes for it, a group, the published AUC per task where our references
have it) and the baseline of the paired tests. ``preset=paper`` is the MIL table of ZoomLDM
(Yellapragada et al., CVPR 2025): Phikon (20x), UNI (20x), CTransPath (5x), ZoomLDM (20x), (5x),
(20x+5x), followed by the newer encoders of :mod:`zoomfeat.encoders.registry` at 20x, 5x and
fused (20x+5x), each only where its bags exist.

What a preset does to a run (:class:`zoomfeat.mil.benchmark.Benchmark`):

* it chooses ``feature_sets`` (the rows whose bags are under ``task.bags``) and ``baseline``
  (``uni_20x``). Rule: with a preset, ``feature_sets`` and ``baseline`` must stay at their
  defaults; anything else is a :class:`~zoomfeat.runtime.errors.ConfigError` (:func:`check_preset`),
  so a table labelled as the paper's never silently holds other sets or another baseline;
* paper rows without bags are named in one warning line with the extraction command that makes
  them, and left out of the run (their table row says "no bags"); newer encoders without bags
  simply have no row; no baseline bags (or no bags of any row) is a
  :class:`~zoomfeat.runtime.errors.BagError`;
* after the normal report it writes ``paper_table.md`` and ``paper_table.csv``.

No new statistics: the table's numbers are :func:`zoomfeat.mil.tables.summary_table` (mean over
test folds, 95% t-interval ``mean +- t_{0.975, n-1} s / sqrt(n)``) and
:func:`zoomfeat.mil.tables.paired_table` (AUC difference to the baseline on the same folds,
Nadeau-Bengio corrected resampled t-test, Wilcoxon signed-rank) of the run's own per-fold table,
i.e. the figures of ``summary.csv`` and ``paired.csv``. The CSV keeps them as fractions (as
``summary.csv``); the Markdown prints percent like the paper. The published column is a reference:
the paper's splits and MIL recipe are not ours, so compare orderings and gaps, not decimals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.mil.bagset import resolve_path, warn
from zoomfeat.mil.report import _fmt_p, write_csv
from zoomfeat.mil.sources import available_sets
from zoomfeat.mil.tables import paired_table, summary_table
from zoomfeat.runtime.atomic import atomic_write_text
from zoomfeat.runtime.errors import BagError, ConfigError

log = logging.getLogger(__name__)

PAPER_GROUP = "paper"
NEWER_GROUP = "newer encoders"
#: columns of ``paper_table.csv`` (metrics as fractions, like summary.csv; published AUC in %)
TABLE_COLUMNS = (
    "group",
    "label",
    "feature_set",
    "status",
    "n_folds",
    "auc_mean",
    "auc_ci_low",
    "auc_ci_high",
    "balanced_accuracy_mean",
    "balanced_accuracy_ci_low",
    "balanced_accuracy_ci_high",
    "auc_diff_vs_baseline",
    "p_corrected_t",
    "p_wilcoxon",
    "published_auc_pct",
)


@dataclass(frozen=True)
class PresetRow:
    """One row of a published table."""

    label: str  # as the paper prints it, e.g. "Phikon (20x)"
    feature_set: str  # the bag set zoomfeat.extract writes for it, e.g. "phikon_20x"
    group: str  # PAPER_GROUP (always shown) | NEWER_GROUP (shown where its bags exist)
    published: Mapping[str, float] = field(default_factory=dict)  # task name -> published AUC (%)


@dataclass(frozen=True)
class Preset:
    """A named table: its rows in print order, the paired tests' baseline, where the numbers are from."""

    name: str
    title: str
    baseline: str
    rows: tuple[PresetRow, ...]
    published_source: str

    @property
    def feature_sets(self) -> list[str]:
        return [r.feature_set for r in self.rows]

    def row(self, feature_set: str) -> PresetRow:
        return next(r for r in self.rows if r.feature_set == feature_set)


def _scales(encoder: str, label: str) -> tuple[PresetRow, ...]:
    """A newer encoder's three rows: 20x tiles, 5x tiles, 20x tile + its 5x parent (fused)."""
    return (
        PresetRow(f"{label} (20x)", f"{encoder}_20x", NEWER_GROUP),
        PresetRow(f"{label} (5x)", f"{encoder}_5x", NEWER_GROUP),
        PresetRow(f"{label} (20x+5x)", f"{encoder}_fused", NEWER_GROUP),
    )


#: registry names and labels of the encoders newer than the paper (tests check the names exist)
NEWER_ENCODERS = (
    ("phikon_v2", "Phikon-v2"),
    ("uni2_h", "UNI2-h"),
    ("virchow2", "Virchow2"),
    ("h_optimus_0", "H-optimus-0"),
    ("h_optimus_1", "H-optimus-1"),
    ("gigapath", "Prov-GigaPath"),
    ("conch_v15", "CONCH v1.5"),
)

#: Published AUCs (%) of the ZoomLDM paper's MIL table as given in issue 13; rows whose figures
#: are in none of our references (the paper and the issue) stay empty.
PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        title="ZoomLDM paper's MIL table (Yellapragada et al., CVPR 2025)",
        baseline="uni_20x",
        rows=(
            PresetRow("Phikon (20x)", "phikon_20x", PAPER_GROUP),
            PresetRow("UNI (20x)", "uni_20x", PAPER_GROUP, {"brca": 94.09, "hrd": 81.79}),
            PresetRow("CTransPath (5x)", "ctranspath_5x", PAPER_GROUP),
            PresetRow("ZoomLDM (20x)", "zoomldm_20x", PAPER_GROUP),
            PresetRow("ZoomLDM (5x)", "zoomldm_5x", PAPER_GROUP),
            PresetRow("ZoomLDM (20x+5x)", "zoomldm_fused", PAPER_GROUP, {"brca": 94.91, "hrd": 88.03}),
            *(row for encoder, label in NEWER_ENCODERS for row in _scales(encoder, label)),
        ),
        published_source="Yellapragada et al., CVPR 2025, MIL table (BRCA subtyping / HRD, AUC %)",
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a :class:`ConfigError` listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)} (preset=<name>) or null")
    return PRESETS[name]


def check_preset(name: str, feature_sets_changed: bool, baseline: str | None) -> None:
    """The config rule (called by ``BenchmarkConfig``): a known preset, which alone chooses the sets.

    Args:
        name: ``preset`` as given.
        feature_sets_changed: whether ``feature_sets`` differs from its default (command line or task).
        baseline: ``baseline`` as given.

    Raises:
        ConfigError: unknown preset, or ``feature_sets`` / ``baseline`` set alongside it.
    """
    preset = get_preset(name)
    if feature_sets_changed:
        raise ConfigError(
            f"preset={name} chooses the feature sets itself ({preset.title}); leave feature_sets out, "
            f"or drop preset= to benchmark your own list"
        )
    if baseline != preset.baseline:
        raise ConfigError(
            f"preset={name} compares every set with {preset.baseline}; leave baseline out (got {baseline!r}), "
            f"or drop preset="
        )


def _exists(bags: str, feature_set: str, found: list[str]) -> bool:
    if "{set}" in bags:
        return resolve_path(bags.replace("{set}", feature_set)).exists()
    return feature_set in found


def extract_command(bags: str, feature_sets: Sequence[str]) -> str:
    """The ``zoomfeat.extract`` call that writes ``feature_sets`` (``{encoder}_{20x,5x,fused}``; the
    ZoomLDM sets come with every run, and UNI is always listed: ZoomLDM is conditioned on it)."""
    encoders = ["uni"] + [
        e for e in dict.fromkeys(fs.rsplit("_", 1)[0] for fs in feature_sets) if e not in ("uni", "zoomldm")
    ]
    out = "EXTRACT_OUT_DIR" if "{set}" in bags else bags
    return f"python -m zoomfeat.extract SLIDES out_dir={out} encoders=[{','.join(encoders)}]"


def preset_feature_sets(name: str, bags: str | Path) -> list[str]:
    """The preset's feature sets whose bags are under ``bags`` (``task.bags``), in table order.

    Args:
        name: preset name.
        bags: ``task.bags``: an extraction/TRIDENT directory or a path with ``{set}``.

    Returns:
        Feature-set names, the baseline among them.

    Raises:
        ConfigError: ``bags`` is a file (an instance CSV has no encoder bag sets).
        BagError: ``bags`` does not exist, or holds no baseline bags.

    Missing paper rows are reported in one :class:`~zoomfeat.mil.bagset.BenchWarning` line.
    """
    preset, text = get_preset(name), str(bags)
    found: list[str] = []
    if "{set}" not in text:
        root = resolve_path(text)
        if root.is_file():
            raise ConfigError(
                f"preset={name} needs bag directories (task.bags=EXTRACT_OUT_DIR), not the file {root}"
            )
        if not root.exists():
            raise BagError(f"no bag source at {root} (task.bags=): check the path")
        found = available_sets(root)
    present = [fs for fs in preset.feature_sets if _exists(text, fs, found)]
    if preset.baseline not in present:
        what = f"bags of {', '.join(present)}" if present else "no bags of any of its feature sets"
        raise BagError(
            f"preset={name}: no {preset.baseline} bags under {text} (the baseline, "
            f"{preset.row(preset.baseline).label}); it found {what} (sets there: {found or 'none'}); "
            f"make them with: {extract_command(text, [preset.baseline])}"
        )
    missing = [r.feature_set for r in preset.rows if r.group == PAPER_GROUP and r.feature_set not in present]
    if missing:
        warn(
            f"preset={name}: no bags under {text} for {', '.join(missing)}; their rows are left out; "
            f"make them with: {extract_command(text, missing)}"
        )
    absent = sorted(
        {fs.rsplit("_", 1)[0] for fs in preset.feature_sets if fs not in present} - {"uni", "zoomldm"}
    )
    log.info("preset=%s: %d feature sets with bags; encoders without bags: %s", name, len(present), absent)
    return present


def _stat(frame: pd.DataFrame, feature_set: str, metric: str, column: str) -> float:
    hit = frame[(frame["feature_set"] == feature_set) & (frame["metric"] == metric)]
    return float(hit[column].iloc[0]) if len(hit) else float("nan")


def paper_table(folds: pd.DataFrame, name: str, task: str) -> pd.DataFrame:
    """The preset's table of one run (:data:`TABLE_COLUMNS`): the paper's rows always (status
    "no bags" when not run), newer encoders where run; numbers from the report's own tables.

    Args:
        folds: the run's per-fold table (feature_set, repeat, fold, metrics, n_train, n_val, n_test).
        name: preset name.
        task: task name (selects the published column).

    Returns:
        One row per table row, in the preset's order.
    """
    preset = get_preset(name)
    ran = list(dict.fromkeys(folds["feature_set"]))
    summary = summary_table(folds, ran)
    paired = paired_table(folds, preset.baseline, ran)
    rows = []
    for row in preset.rows:
        run = row.feature_set in ran
        if not run and row.group != PAPER_GROUP:
            continue
        rec: dict[str, Any] = {"group": row.group, "label": row.label, "feature_set": row.feature_set}
        rec["status"] = "run" if run else "no bags"
        n = _stat(summary, row.feature_set, "auc", "n")
        rec["n_folds"] = int(n) if not math.isnan(n) else 0
        for metric in ("auc", "balanced_accuracy"):
            for col in ("mean", "ci_low", "ci_high"):
                rec[f"{metric}_{col}"] = _stat(summary, row.feature_set, metric, col)
        rec["auc_diff_vs_baseline"] = _stat(paired, row.feature_set, "auc", "diff_mean")
        rec["p_corrected_t"] = _stat(paired, row.feature_set, "auc", "p_corrected_t")
        rec["p_wilcoxon"] = _stat(paired, row.feature_set, "auc", "p_wilcoxon")
        rec["published_auc_pct"] = float(row.published.get(task, np.nan))
        rows.append(rec)
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _pct(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return ""
    ci = "" if math.isnan(low) else f" [{100 * low:.2f}–{100 * high:.2f}]"
    return f"{100 * mean:.2f}{ci}"


def paper_markdown(table: pd.DataFrame, name: str, *, task: str, title: str, command: str = "") -> str:
    """``paper_table.md``: the table of :func:`paper_table` in percent, grouped as the paper, with notes.

    Args:
        table: :func:`paper_table`'s output.
        name, task, title: preset name, task name, the run's title (model, folds, seed).
        command: the extraction command for the rows without bags (printed under the table).
    """
    preset = get_preset(name)
    base = preset.row(preset.baseline).label
    lines = [
        f"# {preset.title}: {task}",
        "",
        title,
        "",
        f"| Features | Bag set | AUC % [95% CI] | Balanced accuracy % [95% CI] | Δ AUC vs {base} | "
        "p (corrected t) | p (Wilcoxon) | Paper AUC % |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|",
    ]
    group = None
    for _, r in table.iterrows():
        if r["group"] != group:
            group = r["group"]
            head = "ZoomLDM paper's rows" if group == PAPER_GROUP else "Newer encoders"
            lines.append(f"| *{head}* | | | | | | | |")
        published = "" if math.isnan(r["published_auc_pct"]) else f"{r['published_auc_pct']:.2f}"
        if r["status"] != "run":
            lines.append(f"| {r['label']} | {r['feature_set']} | no bags | | | | | {published} |")
            continue
        auc = _pct(r["auc_mean"], r["auc_ci_low"], r["auc_ci_high"])
        bacc = _pct(
            r["balanced_accuracy_mean"], r["balanced_accuracy_ci_low"], r["balanced_accuracy_ci_high"]
        )
        if r["feature_set"] == preset.baseline:
            delta, p_t, p_w = "baseline", "", ""
        else:
            d = r["auc_diff_vs_baseline"]
            delta = "" if math.isnan(d) else f"{100 * d:+.2f}"
            p_t, p_w = _fmt_p(r["p_corrected_t"]), _fmt_p(r["p_wilcoxon"])
        lines.append(
            f"| {r['label']} | {r['feature_set']} | {auc} | {bacc} | {delta} | {p_t} | {p_w} | {published} |"
        )
    n = int(table["n_folds"].max()) if len(table) else 0
    lines += [
        "",
        f"AUC and balanced accuracy: mean over {n} test folds in %, 95% t-interval of the mean in brackets "
        "(the figures of summary.csv). Δ: percentage points, feature set minus "
        f"{base} on the same folds; p as in summary.md (Nadeau-Bengio corrected resampled t-test, "
        "Wilcoxon signed-rank; no correction for multiple comparisons).",
        f"Paper AUC %: {preset.published_source}; empty where our references do not have the figure. "
        "The paper's splits and MIL recipe are not this run's: compare orderings and gaps, not decimals.",
    ]
    if command:
        lines.append(f"Rows with no bags: make them with `{command}`, then rerun.")
    return "\n".join(lines) + "\n"


def write_paper_table(
    out_dir: str | Path,
    folds: pd.DataFrame,
    *,
    name: str,
    task: str,
    title: str,
    bags: str | Path | None = None,
) -> dict[str, Path]:
    """Write ``paper_table.csv`` and ``paper_table.md`` into ``out_dir``.

    Args:
        out_dir: the run's output directory.
        folds: the run's per-fold table.
        name, task, title: preset name, task name, the run's title.
        bags: ``task.bags`` (named in the extraction command for rows without bags).

    Returns:
        ``{"paper_table": .md path, "paper_table_csv": .csv path}``.
    """
    out_dir = Path(out_dir)
    table = paper_table(folds, name, task)
    missing = table.loc[table["status"] != "run", "feature_set"].tolist()
    command = extract_command(str(bags or "EXTRACT_OUT_DIR"), missing) if missing else ""
    csv = write_csv(table, out_dir / "paper_table.csv")
    md = atomic_write_text(
        out_dir / "paper_table.md", paper_markdown(table, name, task=task, title=title, command=command)
    )
    return {"paper_table": Path(md), "paper_table_csv": csv}
