"""Build the ``brca`` task's labels CSV: TCGA-BRCA invasive ductal (IDC) vs lobular (ILC).

Inputs (downloaded by the user from the GDC portal, https://portal.gdc.cancer.gov):

* the clinical table ``clinical.tsv`` of the TCGA-BRCA cases (cohort -> "Clinical" download,
  TSV). Both header styles are read: the older flat one (``case_submitter_id``,
  ``project_id``, ``primary_diagnosis``, ``classification_of_tumor``) and the 2024+ dotted one
  (``cases.submitter_id``, ``project.project_id``, ``diagnoses.primary_diagnosis``,
  ``diagnoses.classification_of_tumor``). Missing values are written ``'--``.
* the slides: a directory of slide files or bags (searched recursively for ``*.svs``,
  ``*.h5`` ...) or a list file (GDC manifest/sample sheet with a ``filename`` / ``File Name``
  column, or one file name per line). Slide ids are the file stems; the first 12 characters
  are the case barcode.

Labels come from ``primary_diagnosis`` (ICD-O-3 morphology text): "Infiltrating duct
carcinoma, NOS" -> IDC, "Lobular carcinoma, NOS" -> ILC (change with --ductal/--lobular).
Mixed and other histologies are left out, as are cases whose diagnosis rows disagree. Only
diagnostic (``DX``) tumour slides are kept unless --all-slides.

    python -m zoomfeat.tasks brca --clinical clinical.tsv --slides /data/brca_slides --out brca_labels.csv

Output columns: slide_id, case_id, label (IDC/ILC), primary_diagnosis.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from zoomfeat.runtime.errors import InputError, InputNotFoundError
from zoomfeat.tasks.tcga import case_id, filter_slides, first_column, list_slides

DUCTAL = ("Infiltrating duct carcinoma, NOS",)
LOBULAR = ("Lobular carcinoma, NOS",)
NA_VALUES = ["'--", "--", "", "not reported", "Not Reported", "Unknown", "unknown"]


def read_clinical(path: str | Path) -> pd.DataFrame:
    """``case_id, project, primary_diagnosis, classification`` rows of a GDC clinical.tsv."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"--clinical {path}: no such file; download clinical.tsv of TCGA-BRCA from the GDC portal"
        )
    table = pd.read_csv(path, sep="\t", dtype=str, na_values=NA_VALUES, keep_default_na=True)
    case_col = first_column(
        table,
        ("case_submitter_id", "cases.submitter_id", "submitter_id", "bcr_patient_barcode"),
        what="case barcode",
        source=path,
    )
    diag_col = first_column(
        table, ("primary_diagnosis", "diagnoses.primary_diagnosis"), what="primary_diagnosis", source=path
    )
    proj = next(
        (c for c in ("project_id", "project.project_id", "cases.project_id") if c in table.columns), None
    )
    cls = next(
        (c for c in ("classification_of_tumor", "diagnoses.classification_of_tumor") if c in table.columns),
        None,
    )
    return pd.DataFrame(
        {
            "case_id": table[case_col].str.strip().str.upper(),
            "project": table[proj].str.strip() if proj else None,
            "primary_diagnosis": table[diag_col].str.strip(),
            "classification": table[cls].str.strip().str.lower() if cls else None,
        }
    )


def case_labels(
    clinical: pd.DataFrame,
    *,
    ductal: Sequence[str] = DUCTAL,
    lobular: Sequence[str] = LOBULAR,
    project: str | None = "TCGA-BRCA",
) -> pd.DataFrame:
    """One row per case with an unambiguous IDC/ILC primary diagnosis: case_id, label, primary_diagnosis."""
    rows = clinical.dropna(subset=["case_id"])
    if project and rows["project"].notna().any():
        rows = rows[rows["project"] == project]
    if rows["classification"].notna().any():
        # keep the primary-tumour diagnosis rows of cases that have them
        primary = rows["classification"] == "primary"
        has_primary = rows.groupby("case_id")["classification"].transform(lambda s: (s == "primary").any())
        rows = rows[primary | ~has_primary]
    lookup = {v.lower(): "IDC" for v in ductal} | {v.lower(): "ILC" for v in lobular}
    rows = rows.dropna(subset=["primary_diagnosis"]).assign(
        label=lambda d: d["primary_diagnosis"].str.lower().map(lookup)
    )
    per_case = rows.groupby("case_id").agg(
        labels=("label", lambda s: set(s.dropna())), diagnoses=("primary_diagnosis", lambda s: sorted(set(s)))
    )
    conflicting = per_case[per_case["diagnoses"].map(len) > 1].index.tolist()
    if conflicting:
        warnings.warn(
            f"{len(conflicting)} case(s) have diagnosis rows that disagree and are left out: {conflicting[:10]}",
            stacklevel=2,
        )
    good = per_case[(per_case["diagnoses"].map(len) == 1) & (per_case["labels"].map(len) == 1)]
    return pd.DataFrame(
        {
            "case_id": good.index,
            "label": [next(iter(s)) for s in good["labels"]],
            "primary_diagnosis": [d[0] for d in good["diagnoses"]],
        }
    )


def build_labels(
    clinical: str | Path,
    slides: str | Path,
    *,
    ductal: Sequence[str] = DUCTAL,
    lobular: Sequence[str] = LOBULAR,
    project: str | None = "TCGA-BRCA",
    diagnostic_only: bool = True,
) -> pd.DataFrame:
    """The labels table: one row per kept slide of a case with an IDC or ILC diagnosis."""
    cases = case_labels(read_clinical(clinical), ductal=ductal, lobular=lobular, project=project).set_index(
        "case_id"
    )
    slide_ids = filter_slides(list_slides(slides), diagnostic_only=diagnostic_only, tumour_only=True)
    rows = [
        {
            "slide_id": s,
            "case_id": case_id(s),
            "label": cases.at[case_id(s), "label"],
            "primary_diagnosis": cases.at[case_id(s), "primary_diagnosis"],
        }
        for s in slide_ids
        if case_id(s) in cases.index
    ]
    out = pd.DataFrame(rows, columns=["slide_id", "case_id", "label", "primary_diagnosis"])
    if out.empty:
        raise InputError(
            f"no slide in {slides} belongs to an IDC/ILC case of {clinical}; check that both are TCGA-BRCA"
        )
    return out.sort_values("slide_id").reset_index(drop=True)
