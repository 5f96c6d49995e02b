"""Attention-MIL benchmarks over bag feature sets (``python -m zoomfeat.bench``).

* :mod:`zoomfeat.mil.config` -- the settings: ``conf/bench.yaml`` as nested dataclasses;
* :mod:`zoomfeat.mil.labels` -- a task's labels table -> the cohort (slide, patient, 0/1 label);
* :mod:`zoomfeat.mil.sources` -- bag sources (TRIDENT bag directories, ``features_{set}/``,
  instance CSVs), feature-set globs, and reading a feature set through the right reader;
* :mod:`zoomfeat.mil.bagdir` -- reading a bag directory through :mod:`zoomfeat.bags` (damaged,
  non-finite, mixed-width bags refused; in memory or read on access);
* :mod:`zoomfeat.mil.instance_csv` -- reading an instance CSV (MUSK);
* :mod:`zoomfeat.mil.coverage` -- every labelled slide has a bag in every feature set;
* :mod:`zoomfeat.mil.provenance` -- one recipe per feature set, and the recipe in the report;
* :mod:`zoomfeat.mil.bagset` -- :class:`BagSet`, one feature set's bags (in memory as float16,
  or read on access);
* :mod:`zoomfeat.mil.splits` -- patient-level stratified k-fold splits with a validation part;
* :mod:`zoomfeat.mil.abmil` -- the network: torchmil ABMIL behind fold standardisation + MLP;
* :mod:`zoomfeat.mil.train` -- training one fold, early stopping on validation AUC;
* :mod:`zoomfeat.mil.feeding` -- bags to the device, padded batches, bf16 autocast, predictions;
* :mod:`zoomfeat.mil.metrics` -- AUC / balanced accuracy / F1 / accuracy, CIs, paired tests;
* :mod:`zoomfeat.mil.tables` -- summary, paired and per-class tables;
* :mod:`zoomfeat.mil.report` -- folds.csv, summary.csv/.md/.png, per-class files, ROC curves;
* :mod:`zoomfeat.mil.attention` -- the per-fold attention files;
* :mod:`zoomfeat.mil.fold_loop` -- every feature set on every fold (the paired design);
* :mod:`zoomfeat.mil.benchmark` -- the cross-validated benchmark of several feature sets;
* :mod:`zoomfeat.mil.selection`, :mod:`zoomfeat.mil.recipes_report` -- nested recipe selection;
* :mod:`zoomfeat.mil.presets` -- ``preset=paper``; :mod:`zoomfeat.mil.pathobench` -- Patho-Bench splits.

From Python::

    from zoomfeat.mil import BenchmarkConfig, TaskSection, CVSection, MILConfig, run_benchmark
    run_benchmark(BenchmarkConfig(task=TaskSection(name="brca", labels="labels.csv", bags="features/",
                                                   label_map={"IDC": 0, "ILC": 1}),
                                  cv=CVSection(folds=5), out_dir="results/brca"))
"""

from zoomfeat.mil.abmil import build_model
from zoomfeat.mil.attention import read_attention
from zoomfeat.mil.bagset import BagSet, BenchWarning
from zoomfeat.mil.benchmark import Benchmark, run_benchmark
from zoomfeat.mil.config import (
    BenchmarkConfig,
    CSVSection,
    CVSection,
    DataSection,
    MILConfig,
    TaskSection,
    load_bench_config,
)
from zoomfeat.mil.feeding import predict
from zoomfeat.mil.instance_csv import load_instance_csv
from zoomfeat.mil.labels import read_labels
from zoomfeat.mil.metrics import binary_metrics, paired_comparison, summarize
from zoomfeat.mil.report import write_report
from zoomfeat.mil.sources import load_feature_set, resolve_source
from zoomfeat.mil.splits import load_splits, make_splits, save_splits
from zoomfeat.mil.train import train_fold

__all__ = [
    "BagSet",
    "BenchWarning",
    "Benchmark",
    "BenchmarkConfig",
    "CSVSection",
    "CVSection",
    "DataSection",
    "MILConfig",
    "TaskSection",
    "binary_metrics",
    "build_model",
    "load_bench_config",
    "load_feature_set",
    "load_instance_csv",
    "load_splits",
    "make_splits",
    "paired_comparison",
    "predict",
    "read_attention",
    "read_labels",
    "resolve_source",
    "run_benchmark",
    "save_splits",
    "summarize",
    "train_fold",
    "write_report",
]
