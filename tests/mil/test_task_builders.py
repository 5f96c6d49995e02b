"""zoomfeat.tasks (``python -m zoomfeat.tasks``): labels CSVs for brca (GDC clinical.tsv), hrd (TCGA
HRD score table) and the 3-class MUSK set."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from zoomfeat.mil.labels import read_labels
from zoomfeat.runtime.errors import InputError
from zoomfeat.tasks import brca as brca_labels
from zoomfeat.tasks import hrd as hrd_labels
from zoomfeat.tasks import tcga as tcga_slides
from zoomfeat.tasks.__main__ import main as tasks_main

UUID = "B34C267B-CD4E-4CA0-8D9E-0B4D4C9D3A6B"


def _slides(tmp_path, names):
    d = tmp_path / "slides"
    d.mkdir(exist_ok=True)
    for n in names:
        (d / n).write_bytes(b"")
    return d


def test_slide_barcodes():
    s = f"TCGA-A1-A0SB-01Z-00-DX1.{UUID}"
    assert tcga_slides.case_id(s) == "TCGA-A1-A0SB" and tcga_slides.sample_id(s) == "TCGA-A1-A0SB-01"
    assert tcga_slides.is_diagnostic(s) and not tcga_slides.is_diagnostic("TCGA-A1-A0SB-01A-01-TS1.X")
    assert tcga_slides.slide_stem(f"/x/{s}.svs") == s and tcga_slides.slide_stem(f"{s}_patches.h5") == s


def _old_style_clinical(path):
    # pre-2024 GDC clinical.tsv: flat names, one row per case x treatment, "'--" for missing
    rows = [
        ("uuid-1", "TCGA-AA-0001", "TCGA-BRCA", "Infiltrating duct carcinoma, NOS", "'--"),
        ("uuid-1", "TCGA-AA-0001", "TCGA-BRCA", "Infiltrating duct carcinoma, NOS", "'--"),
        ("uuid-2", "TCGA-AA-0002", "TCGA-BRCA", "Lobular carcinoma, NOS", "'--"),
        ("uuid-3", "TCGA-AA-0003", "TCGA-BRCA", "Infiltrating duct and lobular carcinoma", "'--"),
        ("uuid-4", "TCGA-AA-0004", "TCGA-BRCA", "'--", "'--"),
        ("uuid-5", "TCGA-AA-0005", "TCGA-LUAD", "Lobular carcinoma, NOS", "'--"),
        ("uuid-6", "TCGA-AA-0006", "TCGA-BRCA", "Lobular carcinoma, NOS", "'--"),
        ("uuid-6", "TCGA-AA-0006", "TCGA-BRCA", "Infiltrating duct carcinoma, NOS", "'--"),
    ]
    pd.DataFrame(
        rows, columns=["case_id", "case_submitter_id", "project_id", "primary_diagnosis", "age_at_index"]
    ).to_csv(path, sep="\t", index=False)


def _new_style_clinical(path):
    # 2024+ GDC clinical.tsv: dotted names; a case may have a metastasis diagnosis row too
    rows = [
        ("TCGA-BRCA", "uuid-1", "TCGA-AA-0001", "Infiltrating duct carcinoma, NOS", "primary"),
        ("TCGA-BRCA", "uuid-2", "TCGA-AA-0002", "Lobular carcinoma, NOS", "primary"),
        ("TCGA-BRCA", "uuid-2", "TCGA-AA-0002", "Adenocarcinoma, NOS", "metastasis"),
        ("TCGA-BRCA", "uuid-3", "TCGA-AA-0003", "Infiltrating duct and lobular carcinoma", "primary"),
        ("TCGA-BRCA", "uuid-6", "TCGA-AA-0006", "Lobular carcinoma, NOS", "primary"),
        ("TCGA-BRCA", "uuid-6", "TCGA-AA-0006", "Infiltrating duct carcinoma, NOS", "primary"),
    ]
    cols = [
        "project.project_id",
        "cases.case_id",
        "cases.submitter_id",
        "diagnoses.primary_diagnosis",
        "diagnoses.classification_of_tumor",
    ]
    pd.DataFrame(rows, columns=cols).to_csv(path, sep="\t", index=False)


@pytest.mark.parametrize("style", ["old", "new"])
def test_brca_labels_from_gdc_clinical(tmp_path, style):
    clinical = tmp_path / "clinical.tsv"
    (_old_style_clinical if style == "old" else _new_style_clinical)(clinical)
    slides = _slides(
        tmp_path,
        [
            f"TCGA-AA-0001-01Z-00-DX1.{UUID}.svs",
            f"TCGA-AA-0001-01Z-00-DX2.{UUID}.svs",
            f"TCGA-AA-0001-01A-01-TS1.{UUID}.svs",  # frozen section: left out
            f"TCGA-AA-0001-11A-01-DX1.{UUID}.svs",  # normal tissue: left out
            f"TCGA-AA-0002-01Z-00-DX1.{UUID}.svs",
            f"TCGA-AA-0003-01Z-00-DX1.{UUID}.svs",  # mixed histology: left out
            f"TCGA-AA-0005-01Z-00-DX1.{UUID}.svs",  # other project: left out
            f"TCGA-AA-0006-01Z-00-DX1.{UUID}.svs",  # conflicting diagnoses: left out
            "not-a-tcga-slide.svs",
        ],
    )
    out = tmp_path / "brca_labels.csv"
    with pytest.warns(UserWarning) as record:
        tasks_main(["brca", "--clinical", str(clinical), "--slides", str(slides), "--out", str(out)])
    messages = " ".join(str(w.message) for w in record)
    assert "TCGA-AA-0006" in messages and "not TCGA barcodes" in messages
    labels = pd.read_csv(out)
    assert list(labels.columns) == ["slide_id", "case_id", "label", "primary_diagnosis"]
    assert labels[["case_id", "label"]].values.tolist() == [
        ["TCGA-AA-0001", "IDC"],
        ["TCGA-AA-0001", "IDC"],
        ["TCGA-AA-0002", "ILC"],
    ]
    assert labels["slide_id"].iloc[0] == f"TCGA-AA-0001-01Z-00-DX1.{UUID}"
    cohort = read_labels(out, label_map={"IDC": 0, "ILC": 1})  # what task=brca reads
    assert cohort["label"].tolist() == [0, 0, 1]


def test_brca_labels_slide_list_and_missing_column(tmp_path):
    clinical = tmp_path / "clinical.tsv"
    _old_style_clinical(clinical)
    manifest = tmp_path / "gdc_manifest.txt"
    pd.DataFrame(
        {
            "id": ["f1", "f2"],
            "filename": [f"TCGA-AA-0002-01Z-00-DX1.{UUID}.svs", f"TCGA-AA-0001-01Z-00-DX1.{UUID}.svs"],
            "md5": ["x", "y"],
            "size": [1, 2],
            "state": ["released"] * 2,
        }
    ).to_csv(manifest, sep="\t", index=False)
    with pytest.warns(UserWarning, match="TCGA-AA-0006"):
        labels = brca_labels.build_labels(clinical, manifest)
    assert labels["label"].tolist() == ["IDC", "ILC"]
    pd.DataFrame({"case_submitter_id": ["TCGA-AA-0001"], "diagnosis": ["x"]}).to_csv(
        tmp_path / "bad.tsv", sep="\t", index=False
    )
    with pytest.raises(InputError, match=r"bad.tsv: no primary_diagnosis column"):
        brca_labels.build_labels(tmp_path / "bad.tsv", manifest)


def _xena_hrd(path):
    # TCGA.HRD_withSampleID.txt: a Xena genomic matrix, score rows x 15-character sample columns
    samples = {
        "TCGA-AA-0001-01": (20, 15, 12),
        "TCGA-AA-0002-01": (5, 3, 2),
        "TCGA-AA-0003-01": (18, 14, 10),
        "TCGA-AA-0003-06": (1, 1, 1),
    }
    rows = {
        "ai1": [v[0] for v in samples.values()],
        "lst1": [v[1] for v in samples.values()],
        "hrd-loh": [v[2] for v in samples.values()],
    }
    rows["HRD"] = [sum(v) for v in samples.values()]
    table = pd.DataFrame(rows, index=list(samples)).T
    table.index.name = "sampleID"
    table.to_csv(path, sep="\t")


def test_hrd_labels_from_xena_matrix(tmp_path):
    scores = tmp_path / "TCGA.HRD_withSampleID.txt"
    _xena_hrd(scores)
    slides = _slides(
        tmp_path,
        [
            f"TCGA-AA-0001-01Z-00-DX1.{UUID}.svs",  # 47 -> positive
            f"TCGA-AA-0002-01Z-00-DX1.{UUID}.svs",  # 10 -> negative
            f"TCGA-AA-0003-01Z-00-DX1.{UUID}.svs",  # 42 -> positive (>= threshold)
            f"TCGA-AA-0004-01Z-00-DX1.{UUID}.svs",  # no score: warned, left out
        ],
    )
    out = tmp_path / "hrd_labels.csv"
    with pytest.warns(UserWarning, match=r"1 slide\(s\) have no HRD score.*TCGA-AA-0004"):
        tasks_main(["hrd", "--scores", str(scores), "--slides", str(slides), "--out", str(out)])
    labels = pd.read_csv(out)
    assert labels["hrd_score"].tolist() == [47, 10, 42]
    assert labels["label"].tolist() == ["HRD-positive", "HRD-negative", "HRD-positive"]
    assert labels["score_sample"].tolist() == ["TCGA-AA-0001-01", "TCGA-AA-0002-01", "TCGA-AA-0003-01"]
    cohort = read_labels(out, label_col="hrd_score", threshold=42)  # what task=hrd reads
    assert cohort["label"].tolist() == [1, 0, 1]
    assert read_labels(out, label_col="hrd_score", threshold=45)["label"].tolist() == [1, 0, 0]


def test_hrd_labels_from_long_tables(tmp_path):
    # per-patient table (Thorsson et al. 2018 Table S1 saved as CSV)
    patients = tmp_path / "thorsson.csv"
    pd.DataFrame(
        {
            "TCGA Participant Barcode": ["TCGA-AA-0001", "TCGA-AA-0002"],
            "TCGA Study": ["BRCA", "BRCA"],
            "Homologous Recombination Defects": [50, 12],
        }
    ).to_csv(patients, index=False)
    # per-sample components only: summed
    components = tmp_path / "components.tsv"
    pd.DataFrame(
        {
            "sampleID": ["TCGA-AA-0001-01", "TCGA-AA-0002-01"],
            "TAI": [10, 1],
            "LST": [20, 2],
            "HRD-LOH": [15, 3],
        }
    ).to_csv(components, sep="\t", index=False)
    slides = _slides(tmp_path, [f"TCGA-AA-0001-01Z-00-DX1.{UUID}.svs", f"TCGA-AA-0002-01Z-00-DX1.{UUID}.svs"])
    assert hrd_labels.build_labels(patients, slides)["hrd_score"].tolist() == [50, 12]
    by_components = hrd_labels.build_labels(components, slides, threshold=40)
    assert by_components["hrd_score"].tolist() == [45, 6] and by_components["label"].tolist() == [
        "HRD-positive",
        "HRD-negative",
    ]
    pd.DataFrame({"sampleID": ["TCGA-AA-0001-01"], "purity": [0.5]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="no HRD score column"):
        hrd_labels.read_scores(tmp_path / "bad.csv")


def test_musk3_from_the_shipped_sets(tmp_path):
    out = tmp_path / "musk3.csv"
    assert tasks_main(["musk3", "--out", str(out)]) == out
    table = pd.read_csv(out, header=None)
    assert table.shape[1] == 168  # label, bag id, 166 features
    bags = table.drop_duplicates(1)[0].value_counts().to_dict()
    assert bags == {"musk1-negative": 45, "musk1-positive": 47, "musk2-positive": 39}


def test_command_line_bad_input_is_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    missing = tmp_path / "clinical.tsv"
    proc = subprocess.run(
        [sys.executable, "-m", "zoomfeat.tasks", "brca", "--clinical", str(missing), "--slides", str(tmp_path),
         "--out", str(tmp_path / "x.csv")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"zoomfeat tasks: error: --clinical {missing}: no such file; "
        "download clinical.tsv of TCGA-BRCA from the GDC portal"
    ]
    assert not (tmp_path / "x.csv").exists()
