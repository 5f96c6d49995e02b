"""Cross-validated attention-MIL benchmark of several feature sets on one task: set-up and outputs.

:class:`Benchmark` is what ``python -m zoomfeat.bench`` runs, in five steps:

1. load the labels and find the bags: the cohort comes from the labels CSV (``task.labels``),
   or, for an instance CSV without one (MUSK), from the CSV's own bag labels
   (:mod:`zoomfeat.mil.sources`);
2. check the inputs: every labelled slide has a bag in every feature set (or is dropped from
   all of them with ``task.missing_bags=drop``, :mod:`zoomfeat.mil.coverage`), so every set sees
   one cohort;
3. make the splits (patient-level stratified k-fold, :mod:`zoomfeat.mil.splits`), or reuse
   ``cv.splits``; one split for every feature set, saved as ``splits.csv``;
4. for each feature set and fold: train one ABMIL and evaluate it on the test fold
   (:class:`zoomfeat.mil.fold_loop.FoldLoop`); predictions and attention are written as the
   folds finish;
5. report: per-fold table, summary with 95% CIs, paired tests against the baseline
   (:mod:`zoomfeat.mil.report`), and ``run.json`` (settings, cohort, versions).

Paired design: fold ``(r, f)`` trains with the seed :func:`~zoomfeat.mil.fold_loop.fold_seed`
``(seed, r, f)`` for every feature set, on the same train/validation/test slides, so the per-fold
differences between two sets measure the features, not the split or the initialisation, and the
paired tests (corrected resampled t, Wilcoxon) apply. See ``docs/ARCHITECTURE.md`` (MIL benchmark).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from zoomfeat.mil.aggregators import check_support
from zoomfeat.mil.bagset import BagSet
from zoomfeat.mil.config import BenchmarkConfig
from zoomfeat.mil.coverage import check_coverage
from zoomfeat.mil.fold_loop import FoldLoop
from zoomfeat.mil.html_report import write_html_report_safely
from zoomfeat.mil.labels import class_names, read_labels
from zoomfeat.mil.pathobench import write_pathobench_splits
from zoomfeat.mil.presets import preset_feature_sets, write_paper_table
from zoomfeat.mil.provenance import provenance_table
from zoomfeat.mil.report import PREDICTION_COLUMNS, write_report
from zoomfeat.mil.run_dir import RunDirectory
from zoomfeat.mil.selection import NestedSelection
from zoomfeat.mil.sources import expand_feature_sets, is_instance_csv, load_feature_set, resolve_source
from zoomfeat.mil.splits import fold_keys, load_splits, make_splits, save_splits
from zoomfeat.mil.stats import report_view, write_statistics
from zoomfeat.mil.targets import check_event_count, check_fold_events, read_targets
from zoomfeat.runtime.atomic import atomic_write_text
from zoomfeat.runtime.config import to_dict
from zoomfeat.runtime.device import resolve_device
from zoomfeat.runtime.errors import ConfigError, InputError, InputNotFoundError

log = logging.getLogger(__name__)

#: tasks whose labels CSV ``python -m zoomfeat.tasks NAME`` builds (named in the "needs its bags" hint)
LABEL_BUILDERS = ("brca", "hrd")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: leave them); the old count is restored."""
    if not n:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _versions() -> dict[str, str]:
    import sklearn
    import torch
    import torchmil

    from zoomfeat.runtime.version import __version__

    return {
        "zoomfeat": __version__,
        "torch": torch.__version__,
        "torchmil": getattr(torchmil, "__version__", "?"),
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }


class Benchmark:
    """One benchmark run: :meth:`run` does steps 1-5 of the module docstring in order."""

    def __init__(self, cfg: BenchmarkConfig) -> None:
        self.cfg = cfg
        self.task = cfg.task
        self.feature_sets = list(cfg.feature_sets)
        self.out_dir = Path(cfg.out_dir)
        self.records: list[dict[str, Any]] = []
        self.predictions: list[dict[str, Any]] = []
        self.preloaded: dict[str, BagSet] = {}
        self.provenance: dict[str, dict[str, Any]] = {}

    def run(self) -> dict[str, Any]:
        """Steps 1-5; returns ``{"folds": DataFrame, "paths": {name: Path}, "out_dir": Path}``.

        The run writes into a staging directory and replaces ``out_dir`` as a whole when it has
        finished (:class:`~zoomfeat.mil.run_dir.RunDirectory`): a concurrent run into the same
        ``out_dir`` is refused, and a failed or stopped run leaves ``out_dir`` as it was.
        """
        self.start = time.perf_counter()
        with torch_threads(self.cfg.threads), RunDirectory(self.out_dir, inputs=self._inputs()) as run_dir:
            self.work_dir = run_dir.work
            self.device = resolve_device(self.cfg.device)
            self.load_inputs()
            self.check_inputs()
            self.make_splits()
            self.train_and_evaluate()
            result = self.report()
            run_dir.publish()
            result["paths"] = {k: run_dir.final_path(p) for k, p in result["paths"].items()}
            return result

    def _inputs(self) -> dict[str, str | None]:
        """The input paths a run must not find inside its out_dir (it replaces out_dir whole)."""
        return {"task.labels": self.task.labels, "task.bags": self.task.bags}

    # ------------------------------------------------------------------ step 1
    def load_inputs(self) -> None:
        """Step 1: each feature set's bag source, and the cohort (slide_id, case_id, label)."""
        task = self.task
        if not task.bags:
            hint = (
                f" (build the labels with python -m zoomfeat.tasks {task.name} --help)"
                if task.name in LABEL_BUILDERS
                else ""
            )
            raise ConfigError(
                f"task {task.name!r} needs its bags: task.bags=DIR (a zoomfeat.extract output directory) "
                f"and task.labels=CSV{hint}"
            )
        if task.labels and not Path(task.labels).expanduser().is_file():
            # the labels file first: without it nothing else matters
            raise InputNotFoundError(
                f"no labels file at {task.labels} (task.labels=): give a CSV with columns "
                f"{task.slide_col}, {task.case_col}, {task.label_col}"
            )
        if self.cfg.preset:  # the preset's sets whose bags exist (zoomfeat.mil.presets)
            self.feature_sets = preset_feature_sets(self.cfg.preset, task.bags)
        self.feature_sets = expand_feature_sets(self.feature_sets, task.bags)
        self.selection = NestedSelection.plan(self.cfg, self.feature_sets)
        self.feature_sets = self.selection.feature_sets(self.feature_sets)  # + candidates not listed
        baseline = self.cfg.baseline
        self.baseline = baseline if baseline in self.feature_sets and len(self.feature_sets) > 1 else None
        self.sources = {fs: resolve_source(task.bags, fs) for fs in self.feature_sets}
        if task.labels and task.type != "classification":  # regression / survival targets
            self.cohort_source = str(task.labels)
            self.cohort = read_targets(task.labels, task)
            self.class_names = []
            return
        if task.labels:
            self.cohort_source = str(task.labels)
            self.cohort = read_labels(
                task.labels,
                slide_col=task.slide_col,
                case_col=task.case_col,
                label_col=task.label_col,
                label_map=task.label_map,
                threshold=task.threshold,
                auto_classes=task.auto_classes,
            )
            self.class_names = class_names(self.cohort)
            return
        first = self.feature_sets[0]
        if task.type != "classification":
            raise ConfigError(
                f"task.type={task.type} needs a labels CSV with the target columns (task.labels=)"
            )
        self.cohort_source = str(self.sources[first])
        if not is_instance_csv(self.sources[first]):
            raise InputError(
                f"task {task.name!r}: {self.sources[first]} is a bag directory, so the task needs a labels CSV (task.labels=)"
            )
        csv_options = {**asdict(task.csv), "label_map": task.label_map, "auto_classes": task.auto_classes}
        self.preloaded[first] = load_feature_set(
            self.sources[first], first, cohort=None, **{**self._load_options(), "csv_options": csv_options}
        )
        self.cohort = self.preloaded[first].cohort()
        self.class_names = self.preloaded[first].class_names or class_names(self.cohort)

    def _load_options(self) -> dict[str, Any]:
        data = self.cfg.data
        return dict(
            in_memory=data.in_memory,
            dtype=data.dtype,
            memory_fraction=data.memory_fraction,
            csv_options=asdict(self.task.csv),
            progress=self.cfg.progress,
        )

    # ------------------------------------------------------------------ step 2
    def check_inputs(self) -> None:
        """Step 2: every labelled slide has a bag in every feature set (or leaves the cohort), and
        the classes are 0..k-1 with slides in each (k = 2: binary; k > 2: softmax head)."""
        if self.task.labels:
            self.cohort = check_coverage(self.cohort, self.sources, self.task.missing_bags, self.task.labels)
            if self.cohort.empty:
                raise InputError(f"{self.task.labels}: no labelled slide has a bag in every feature set")
        k = max(len(self.class_names), 2)
        empty = [self.class_names[c] for c in range(k) if not (self.cohort["label"] == c).any()]
        if empty and len(self.class_names) > 2:
            raise InputError(
                f"{self.cohort_source}: class(es) {empty} of {self.class_names} have no slide with a bag; "
                f"drop them from task.label_map or label some slides with them"
            )
        self.n_classes = k
        for mil in self.cfg.mil_list:  # an aggregator that cannot do this task: one line, before training
            check_support(mil, self.task.type, k)
        self.pred_columns = list(PREDICTION_COLUMNS) + ([f"prob_{c}" for c in range(k)] if k > 2 else [])

    # ------------------------------------------------------------------ step 3
    def make_splits(self) -> None:
        """Step 3: one patient-level split for every feature set, saved as ``splits.csv``."""
        cfg, cohort = self.cfg, self.cohort
        if self.task.type == "survival" and not cfg.cv.splits:  # every test fold needs an event
            check_event_count(cohort, cfg.cv.folds, self.cohort_source, str(self.task.event_col))
        if cfg.cv.splits:
            self.splits = load_splits(cfg.cv.splits, cohort)
        else:
            self.splits = make_splits(
                cohort["slide_id"],
                cohort["case_id"],
                cohort["label"],
                folds=cfg.cv.folds,
                repeats=cfg.cv.repeats,
                seed=cfg.seed,
                val_fraction=cfg.cv.val_fraction,
                source=self.cohort_source,
            )
        if self.task.type == "survival":  # every training and test part needs an event
            check_fold_events(self.splits, cohort, self.cohort_source, str(self.task.event_col))
        save_splits(self.splits, self.work_dir / "splits.csv")
        self.selection.check_splits(self.splits)
        # the same folds in Patho-Bench's format, so both tools can be run on identical splits
        write_pathobench_splits(self.splits, self.work_dir, self.task.name, self.class_names)
        self.keys = fold_keys(self.splits)
        self.n_cases = cohort["case_id"].nunique()
        self.counts = cohort["label"].value_counts().sort_index().to_dict()
        self.n_folds = len({f for _, f in self.keys})
        self.n_repeats = len({r for r, _ in self.keys})
        log.info(
            "task %s: %d slides, %d patients, labels %s; %d folds x %d repeats; device %s",
            self.task.name,
            len(cohort),
            self.n_cases,
            self.counts,
            self.n_folds,
            self.n_repeats,
            self.device,
        )

    # ------------------------------------------------------------------ step 4
    def train_and_evaluate(self) -> None:
        """Step 4: for each feature set and fold, train on train/val and evaluate on test
        (:class:`~zoomfeat.mil.fold_loop.FoldLoop`; one set's bags in memory at a time)."""
        self.loop = FoldLoop(
            self.cfg,
            splits=self.splits,
            keys=self.keys,
            device=self.device,
            n_classes=self.n_classes,
            pred_columns=self.pred_columns,
            selection=self.selection,
            out_dir=self.work_dir,
            cohort=self.cohort,
        )
        self.loop.run(self.feature_sets, self.load_set, self.cohort_source)
        self.records, self.predictions = self.loop.records, self.loop.predictions
        self.provenance = self.loop.provenance

    def load_set(self, fs: str) -> BagSet:
        """Feature set ``fs``'s bags: the one read in step 1 (an instance CSV), else from its source."""
        return self.preloaded.pop(fs, None) or load_feature_set(
            self.sources[fs], fs, cohort=self.cohort, **self._load_options()
        )

    # ------------------------------------------------------------------ step 5
    def report(self) -> dict[str, Any]:
        """Step 5: folds/summary/paired tables, summary.md/.png, run.json."""
        cfg, mil = self.cfg, self.cfg.mil
        folds = pd.DataFrame(self.records)
        title = (
            f"{self.task.name}: {', '.join(m.name for m in cfg.mil_list)}, {self.n_folds}-fold patient-level CV "
            f"x {self.n_repeats} repeat(s), seed(s) {', '.join(map(str, cfg.run_seeds))}"
        )
        notes = [
            f"Cohort: {len(self.cohort)} bags (slides) from {self.n_cases} patients; label counts {self.counts}.",
            f"Model: {' + '.join(m.name for m in cfg.mil_list)} (first: mil.arch {mil.arch}, gated={mil.gated}), hidden {list(mil.hidden)}, attention dim {mil.att_dim}, "
            f"AdamW lr {mil.lr:g} wd {mil.weight_decay:g}, up to {mil.epochs} epochs, early stopping on validation AUC "
            f"(patience {mil.patience}), class-balanced loss, instance standardisation={mil.standardize}.",
            "Decision threshold 0.5 on the predicted probability (balanced accuracy, F1, accuracy)."
            if self.n_classes == 2
            else f"{self.n_classes} classes ({', '.join(self.class_names)}): softmax head, class-balanced "
            "cross-entropy (each class 1/k of the loss); AUC = macro one-vs-rest AUC, F1 = macro F1, balanced "
            "accuracy = mean recall over classes; prediction = the most probable class; early stopping on "
            "validation macro AUC.",
            *[f"Bags of {line}." for line in provenance_table(self.provenance, self.feature_sets)],
        ]
        predictions = pd.DataFrame(self.predictions, columns=self.loop.pred_columns)
        folds, predictions = self.selection.add_rows(folds, predictions)  # the selected row, when asked
        sets, notes = self.selection.report_sets(self.feature_sets), notes + self.selection.notes()
        work = self.work_dir
        by_seed, all_predictions = folds, predictions  # every seed and aggregator (zoomfeat.mil.stats)
        folds, predictions, view_sets, view_baseline = report_view(folds, predictions, sets, self.baseline)
        classes = self.class_names if self.task.type == "classification" else None
        paths = write_report(
            work,
            folds,
            baseline=view_baseline,
            title=title,
            notes=notes,
            feature_sets=view_sets,
            predictions=predictions,
            class_names=classes,
        )
        stat_paths, stat_text = write_statistics(
            work, by_seed, predictions=all_predictions, baseline=self.baseline, task_type=self.task.type, n_boot=cfg.bootstrap,
            risk_groups=self.task.risk_groups, feature_sets=sets, title=title,
        )  # fmt: skip
        paths.update(stat_paths)
        atomic_write_text(paths["markdown"], paths["markdown"].read_text() + stat_text)
        paths.update(
            self.selection.write(work, folds, predictions=predictions, sources=self.sources, title=title)
        )
        if cfg.preset:  # the published table's layout: paper_table.md/.csv
            paths.update(
                write_paper_table(
                    work, folds, name=cfg.preset, task=self.task.name, title=title, bags=self.task.bags
                )
            )
        paths["predictions"] = self.loop.pred_path
        paths["splits"] = work / "splits.csv"
        run_info = {
            "task": self.task.name,
            "config": {**to_dict(cfg), "out_dir": str(self.out_dir)},
            "feature_sets": self.feature_sets,
            "sources": {fs: str(p) for fs, p in self.sources.items()},
            "provenance": self.provenance,
            "cohort": {
                "slides": len(self.cohort),
                "patients": int(self.n_cases),
                "labels": {str(k): int(v) for k, v in self.counts.items()},
                "classes": self.class_names,
            },
            "device": str(self.device),
            "versions": _versions(),
            "seconds": round(time.perf_counter() - self.start, 1),
        }
        paths["run"] = atomic_write_text(work / "run.json", json.dumps(run_info, indent=2, default=str))
        paths.update(write_html_report_safely(work))
        log.info("wrote %s into %s", ", ".join(p.name for p in paths.values()), self.out_dir)
        return {"folds": folds, "paths": paths, "out_dir": self.out_dir}


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Run the benchmark (:class:`Benchmark`).

    Args:
        cfg: the settings (``conf/bench.yaml`` as :class:`~zoomfeat.mil.config.BenchmarkConfig`).

    Returns:
        ``{"folds": DataFrame (one row per set and fold), "paths": {name: Path}, "out_dir": Path}``.
    """
    return Benchmark(cfg).run()
