"""Shared helpers of the TCGA label builders (:mod:`zoomfeat.tasks.brca`, :mod:`zoomfeat.tasks.hrd`):
slide lists and TCGA barcodes.

A slide id is a TCGA slide file stem, e.g. ``TCGA-A1-A0SB-01Z-00-DX1.B34C267B-...``:
characters 1-12 are the patient (case) barcode ``TCGA-A1-A0SB``, 1-15 the sample barcode
``TCGA-A1-A0SB-01`` (sample type 01-09 tumour, 10-19 normal, 20-29 control), and the slide
part ``DX`` marks a diagnostic (FFPE) slide, ``TS``/``BS`` a frozen section.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pandas as pd

from zoomfeat.runtime.errors import InputError, InputNotFoundError

SLIDE_SUFFIXES = {
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".h5",
}
_BARCODE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)


def slide_stem(name: str) -> str:
    """A slide file name (or path) without directory and slide/bag extension."""
    name = Path(str(name).strip()).name
    suffix = Path(name).suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        name = name[: -len(suffix)]
    return name.removesuffix("_patches")


def list_slides(source: str | Path) -> list[str]:
    """Slide ids from a directory (slide or bag files, searched recursively) or a list file.

    A list file is a GDC manifest / sample sheet (a ``filename`` / ``File Name`` /
    ``file_name`` / ``slide_id`` column, tab or comma separated) or one name per line.
    """
    source = Path(source)
    if source.is_dir():
        stems = {
            slide_stem(p.name)
            for p in source.rglob("*")
            if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith(".")
        }
        if not stems:
            raise InputNotFoundError(
                f"no slide or bag files under {source}; give the folder that holds the TCGA slides (or bags)"
            )
        return sorted(stems)
    if not source.is_file():
        raise InputNotFoundError(
            f"--slides {source}: no such directory or list file; give a folder of slides/bags or a GDC manifest"
        )
    first = source.read_text().splitlines()[0] if source.stat().st_size else ""
    sep = "\t" if "\t" in first else ","
    table = pd.read_csv(source, sep=sep, dtype=str)
    for col in ("slide_id", "filename", "File Name", "file_name"):
        if col in table.columns:
            return sorted({slide_stem(v) for v in table[col].dropna()})
    lines = [line.strip() for line in source.read_text().splitlines() if line.strip()]
    return sorted({slide_stem(line) for line in lines})


def case_id(slide_id: str) -> str:
    """The 12-character patient (case) barcode (``TCGA-XX-XXXX``)."""
    return slide_id[:12].upper()


def sample_id(slide_id: str) -> str:
    """The 15-character sample barcode (``TCGA-XX-XXXX-01``)."""
    return slide_id[:15].upper()


def sample_type(slide_id: str) -> int | None:
    """The sample type code (01-09 tumour, 10-19 normal, 20-29 control); None when not a number."""
    code = slide_id[13:15]
    return int(code) if code.isdigit() else None


def is_diagnostic(slide_id: str) -> bool:
    """Whether the slide part of the barcode is ``DX`` (a diagnostic FFPE slide)."""
    parts = slide_id.split(".")[0].split("-")
    return len(parts) >= 6 and parts[5].upper().startswith("DX")


def filter_slides(slides: list[str], *, diagnostic_only: bool = True, tumour_only: bool = True) -> list[str]:
    """TCGA slides only (others warned about), optionally only diagnostic and tumour slides."""
    kept, foreign = [], []
    for s in slides:
        if not _BARCODE.match(s):
            foreign.append(s)
            continue
        kind = sample_type(s)
        if tumour_only and not (kind is not None and 1 <= kind <= 9):
            continue
        if diagnostic_only and not is_diagnostic(s):
            continue
        kept.append(s)
    if foreign:
        warnings.warn(
            f"{len(foreign)} slide name(s) are not TCGA barcodes and are ignored: {foreign[:5]}", stacklevel=2
        )
    return kept


def first_column(table: pd.DataFrame, candidates: tuple[str, ...], *, what: str, source: str | Path) -> str:
    """The first of ``candidates`` that is a column of ``table`` (an :class:`InputError` naming ``source``)."""
    for c in candidates:
        if c in table.columns:
            return c
    raise InputError(
        f"{source}: no {what} column; looked for {list(candidates)} (columns: {list(table.columns)[:30]})"
    )
