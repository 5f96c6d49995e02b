"""``python -m zoomfeat.tasks brca|hrd|musk3 ...``: write the labels CSV a benchmark task reads.

    python -m zoomfeat.tasks brca --clinical clinical.tsv --slides SLIDES_OR_BAGS --out brca_labels.csv
    python -m zoomfeat.tasks hrd --scores TCGA.HRD_withSampleID.txt --slides SLIDES_OR_BAGS --out hrd_labels.csv
    python -m zoomfeat.tasks musk3 --out musk3.csv

Then ``python -m zoomfeat.bench task=brca task.labels=brca_labels.csv task.bags=...``. Bad input
(a missing file, a table without the columns looked for) prints one line
``zoomfeat tasks: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from zoomfeat.cli import report_errors

_ALL_SLIDES_HELP = "keep frozen (TS/BS) slides too, not only diagnostic DX slides"
_SLIDES_HELP = "directory of slides/bags (searched recursively), or a GDC manifest / list file"


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per task, each with the options of its builder."""
    from zoomfeat.tasks import brca, hrd

    ap = argparse.ArgumentParser(
        prog="python -m zoomfeat.tasks", description=(__doc__ or "").split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="task", required=True, metavar="{brca,hrd,musk3}")
    b = sub.add_parser("brca", help="TCGA-BRCA IDC vs ILC from the GDC clinical.tsv")
    b.add_argument("--clinical", required=True, help="GDC clinical.tsv of TCGA-BRCA")
    b.add_argument("--slides", required=True, help=_SLIDES_HELP)
    b.add_argument("--out", required=True, help="labels CSV to write")
    b.add_argument("--project", default="TCGA-BRCA", help="keep rows of this project_id ('' for all)")
    b.add_argument(
        "--ductal", action="append", help=f"primary_diagnosis value(s) for IDC (default {list(brca.DUCTAL)})"
    )
    b.add_argument(
        "--lobular",
        action="append",
        help=f"primary_diagnosis value(s) for ILC (default {list(brca.LOBULAR)})",
    )
    b.add_argument("--all-slides", action="store_true", help=_ALL_SLIDES_HELP)
    h = sub.add_parser("hrd", help="HRD-positive/negative from the PanCanAtlas HRD score table")
    h.add_argument(
        "--scores", required=True, help="TCGA.HRD_withSampleID.txt (or a per-sample/patient HRD table)"
    )
    h.add_argument("--slides", required=True, help=_SLIDES_HELP)
    h.add_argument("--out", required=True, help="labels CSV to write")
    h.add_argument(
        "--threshold", type=float, default=hrd.THRESHOLD, help="HRD-positive when score >= this (default 42)"
    )
    h.add_argument("--all-slides", action="store_true", help=_ALL_SLIDES_HELP)
    m = sub.add_parser("musk3", help="3-class instance CSV from the shipped MUSK1/MUSK2 sets")
    m.add_argument("--out", required=True, help="CSV to write")
    return ap


def _write(labels: pd.DataFrame, out: str, extra: str = "") -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    labels.to_csv(out, index=False)
    counts = labels.drop_duplicates("case_id")["label"].value_counts().to_dict()
    print(f"wrote {out}: {len(labels)} slides, {labels['case_id'].nunique()} cases {counts}{extra}")


def run(args: argparse.Namespace) -> pd.DataFrame | Path:
    """Build and write what ``args.task`` asks for; returns the labels table (musk3: the CSV path)."""
    from zoomfeat.tasks import brca, hrd, musk3

    if args.task == "musk3":
        out = musk3.build(args.out)
        print(out)
        return out
    if args.task == "brca":
        labels = brca.build_labels(
            args.clinical,
            args.slides,
            ductal=args.ductal or brca.DUCTAL,
            lobular=args.lobular or brca.LOBULAR,
            project=args.project or None,
            diagnostic_only=not args.all_slides,
        )
        _write(labels, args.out)
        return labels
    labels = hrd.build_labels(
        args.scores, args.slides, threshold=args.threshold, diagnostic_only=not args.all_slides
    )
    _write(labels, args.out, f" (threshold {args.threshold:g})")
    return labels


def main(argv: Sequence[str] | None = None) -> pd.DataFrame | Path:
    return report_errors("tasks", run, parser().parse_args(argv))


if __name__ == "__main__":
    main()
