"""Attention-MIL benchmarks over bag feature sets (``python -m zoomfeat.bench``).

* :mod:`zoomfeat.mil.data` -- labels tables, bag sources (TRIDENT bag directories read through
  :mod:`zoomfeat.bags`, or instance CSVs), bags held in memory as float16;
* :mod:`zoomfeat.mil.splits` -- patient-level stratified k-fold splits with a validation part;
* :mod:`zoomfeat.mil.train` -- torchmil ABMIL training with early stopping on validation AUC;
* :mod:`zoomfeat.mil.metrics` -- AUC / balanced accuracy / F1 / accuracy, CIs, paired tests;
* :mod:`zoomfeat.mil.report` -- folds.csv, summary.csv/.md/.png, attention files;
* :mod:`zoomfeat.mil.benchmark` -- the cross-validated benchmark of several feature sets.
"""

from zoomfeat.mil.benchmark import BenchmarkConfig, run_benchmark
from zoomfeat.mil.data import (
    BagSet,
    BenchWarning,
    load_feature_set,
    load_instance_csv,
    read_labels,
    resolve_source,
)
from zoomfeat.mil.metrics import binary_metrics, paired_comparison, summarize
from zoomfeat.mil.report import read_attention, write_report
from zoomfeat.mil.splits import load_splits, make_splits, save_splits
from zoomfeat.mil.train import MILConfig, build_model, predict, train_fold

__all__ = [
    "BagSet",
    "BenchWarning",
    "BenchmarkConfig",
    "MILConfig",
    "binary_metrics",
    "build_model",
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
