"""Build the ``hrd`` task's labels CSV from the published TCGA HRD scores.

Scores: the TCGA PanCanAtlas genomic-scar HRD scores of Knijnenburg et al. 2018 (Cell
Reports 23:239), distributed as ``TCGA.HRD_withSampleID.txt`` (GDC PanCanAtlas publication
page and the UCSC Xena PanCanAtlas hub). That file is a Xena "genomic matrix": the first
column ``sampleID`` names the score rows ``ai1`` (telomeric allelic imbalance, TAI),
``lst1`` (large-scale state transitions, LST), ``hrd-loh`` (HRD-LOH) and ``HRD`` (their sum),
and each further column is a 15-character sample barcode (``TCGA-A1-A0SB-01``). A long table
with one row per sample or patient is read too (an id column such as ``sampleID`` /
``sample`` / ``TCGA Participant Barcode``, and an ``HRD`` / ``HRD_score`` / ``Homologous
Recombination Defects`` column or the three components, which are then summed), e.g. Table S1
of Thorsson et al. 2018 saved as CSV.

Each slide (stem whose first 15 characters are its sample barcode) takes its own sample's
score; failing that, its patient's score when the patient has one scored tumour sample (or a
primary tumour "-01" sample among several). HRD-positive: score >= --threshold (default 42,
the Myriad/Telli et al. 2016 cut-off on HRD-LOH + TAI + LST). The bench task thresholds the
``hrd_score`` column itself (``task.threshold``), so the threshold can change without
rebuilding this table.

    python -m zoomfeat.tasks hrd --scores TCGA.HRD_withSampleID.txt --slides /data/slides --out hrd_labels.csv

Output columns: slide_id, case_id, hrd_score, label (HRD-positive/HRD-negative), score_sample.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from zoomfeat.runtime.errors import InputError, InputNotFoundError
from zoomfeat.tasks.tcga import case_id, filter_slides, list_slides, sample_id

THRESHOLD = 42.0
ID_COLUMNS = (
    "sampleID",
    "sample",
    "SampleID",
    "Sample",
    "sample_id",
    "Tumor_Sample_Barcode",
    "TCGA Participant Barcode",
    "patient",
    "bcr_patient_barcode",
    "case_id",
)
SCORE_COLUMNS = (
    "HRD",
    "HRD_score",
    "hrd_score",
    "HRD-sum",
    "HRD_sum",
    "HRDsum",
    "Homologous Recombination Defects",
)
COMPONENTS = {
    "tai": ("ai1", "TAI", "HRD-TAI", "Telomeric.AI", "Telomeric AI", "tai"),
    "lst": ("lst1", "LST", "HRD-LST", "lst"),
    "loh": ("hrd-loh", "HRD-LOH", "LOH", "hrd_loh", "loh"),
}
_WIDE_ROWS = {"hrd", "ai1", "lst1", "hrd-loh"}


def _read_table(path: Path) -> pd.DataFrame:
    first = path.open().readline()
    sep = "\t" if "\t" in first else ","
    return pd.read_csv(path, sep=sep, dtype=str)


def _score(table: pd.DataFrame, path: Path) -> pd.Series:
    for col in SCORE_COLUMNS:
        if col in table.columns:
            return pd.to_numeric(table[col], errors="coerce")
    found = {k: next((c for c in names if c in table.columns), None) for k, names in COMPONENTS.items()}
    if all(found.values()):
        return sum(pd.to_numeric(table[c], errors="coerce") for c in found.values())
    raise InputError(
        f"{path}: no HRD score column (looked for {list(SCORE_COLUMNS)}) nor all three components {dict(COMPONENTS)}; columns: {list(table.columns)[:20]}"
    )


def read_scores(path: str | Path) -> pd.Series:
    """HRD score per barcode (15-character sample or 12-character patient), NaNs dropped."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"--scores {path}: no such file; download TCGA.HRD_withSampleID.txt (PanCanAtlas)"
        )
    table = _read_table(path)
    first = table.columns[0]
    if {str(v).strip().lower() for v in table[first].dropna()} & _WIDE_ROWS:
        # Xena genomic matrix: score rows x sample columns
        wide = table.set_index(first)
        table = wide.T.reset_index().rename(columns={"index": "sampleID"})
        table.columns = [str(c).strip() for c in table.columns]
        id_col = "sampleID"
    else:
        found = next((c for c in ID_COLUMNS if c in table.columns), None)
        if found is None:
            raise InputError(
                f"{path}: no sample/patient id column; looked for {list(ID_COLUMNS)} (columns: {list(table.columns)[:20]})"
            )
        id_col = found
    scores = pd.Series(
        _score(table, path).to_numpy(dtype=np.float64),
        index=table[id_col].str.strip().str.upper().str.slice(0, 15),
    )
    scores = scores[scores.notna()]
    dup = scores.index[scores.index.duplicated()]
    if len(dup):
        warnings.warn(
            f"{path}: {len(set(dup))} barcode(s) listed more than once; their scores are averaged: {sorted(set(dup))[:5]}",
            stacklevel=2,
        )
        scores = scores.groupby(level=0).mean()
    if scores.empty:
        raise InputError(f"{path}: no numeric HRD scores")
    return scores


def slide_score(slide: str, scores: pd.Series, by_patient: dict[str, list[str]]) -> tuple[float, str] | None:
    """(score, barcode it came from) of a slide: its sample's, else its patient's; None if ambiguous."""
    sample = sample_id(slide)
    if sample in scores.index:
        return float(scores[sample]), sample
    patient = case_id(slide)
    if patient in scores.index:  # patient-level table
        return float(scores[patient]), patient
    candidates = [s for s in by_patient.get(patient, []) if s[13:15].isdigit() and 1 <= int(s[13:15]) <= 9]
    if len(candidates) == 1:
        return float(scores[candidates[0]]), candidates[0]
    primary = [s for s in candidates if s.endswith("-01")]
    if len(primary) == 1:
        return float(scores[primary[0]]), primary[0]
    return None


def build_labels(
    scores_path: str | Path, slides: str | Path, *, threshold: float = THRESHOLD, diagnostic_only: bool = True
) -> pd.DataFrame:
    """The labels table: one row per kept slide with an HRD score (its own sample's or its patient's)."""
    scores = read_scores(scores_path)
    by_patient: dict[str, list[str]] = {}
    for barcode in scores.index:
        if len(barcode) == 15:
            by_patient.setdefault(barcode[:12], []).append(barcode)
    rows, unscored = [], []
    for slide in filter_slides(list_slides(slides), diagnostic_only=diagnostic_only, tumour_only=True):
        found = slide_score(slide, scores, by_patient)
        if found is None:
            unscored.append(slide)
            continue
        score, barcode = found
        rows.append(
            {
                "slide_id": slide,
                "case_id": case_id(slide),
                "hrd_score": score,
                "label": "HRD-positive" if score >= threshold else "HRD-negative",
                "score_sample": barcode,
            }
        )
    if unscored:
        warnings.warn(
            f"{len(unscored)} slide(s) have no HRD score and are left out: {unscored[:10]}", stacklevel=2
        )
    out = pd.DataFrame(rows, columns=["slide_id", "case_id", "hrd_score", "label", "score_sample"])
    if out.empty:
        raise InputError(f"no slide in {slides} has an HRD score in {scores_path}")
    return out.sort_values("slide_id").reset_index(drop=True)
