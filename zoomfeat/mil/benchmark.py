"""Cross-validated attention-MIL benchmark of several feature sets on one task.

:func:`run_benchmark` is what ``python -m zoomfeat.bench`` calls: it reads the labels, checks
every labelled slide has a bag in every feature set, makes (or reloads) one patient-level
split shared by all feature sets, trains and tests one ABMIL per (feature set, repeat, fold)
with the same seed per fold, and writes the report (see :mod:`zoomfeat.mil.report`).
"""

from __future__ import annotations

import json
import logging
import platform
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.mil.data import (
    BagSet,
    BenchWarning,
    check_coverage,
    is_instance_csv,
    load_feature_set,
    read_labels,
    resolve_source,
)
from zoomfeat.mil.metrics import METRICS, binary_metrics
from zoomfeat.mil.report import PREDICTION_COLUMNS, write_attention, write_report
from zoomfeat.mil.splits import fold_keys, fold_parts, load_splits, make_splits, save_splits
from zoomfeat.mil.train import BagFeeder, MILConfig, predict, resolve_device, train_fold

log = logging.getLogger(__name__)


@dataclass
class BenchmarkConfig:
    """Everything one benchmark run needs (built from ``conf/bench.yaml`` by the entry point)."""

    task: str
    bags: str
    out_dir: Path
    labels: str | None = None
    feature_sets: Sequence[str] = ("uni_20x", "uni_fused", "zoomldm_20x", "zoomldm_5x", "zoomldm_fused")
    baseline: str | None = "uni_20x"
    slide_col: str = "slide_id"
    case_col: str | None = "case_id"
    label_col: str = "label"
    label_map: Mapping[str, int] | None = None
    threshold: float | None = None
    missing_bags: str = "error"
    csv: Mapping[str, Any] = field(default_factory=dict)
    folds: int = 5
    repeats: int = 1
    val_fraction: float = 0.2
    seed: int = 0
    splits: str | None = None
    mil: MILConfig = field(default_factory=MILConfig)
    device: str = "auto"
    in_memory: bool | str = "auto"
    dtype: str = "float16"
    memory_fraction: float = 0.5
    save_attention: bool = True
    progress: bool = True


def fold_seed(seed: int, repeat: int, fold: int) -> int:
    """The training seed of one fold: the same for every feature set (paired comparison)."""
    return int(np.random.SeedSequence([int(seed), int(repeat), int(fold)]).generate_state(1)[0])


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


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Run the benchmark; returns ``{"folds": DataFrame, "paths": {...}, "out_dir": Path}``."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    feature_sets = list(cfg.feature_sets)
    if not feature_sets:
        raise ValueError("no feature sets to benchmark (feature_sets=[...])")
    if len(set(feature_sets)) != len(feature_sets):
        raise ValueError(f"feature_sets lists a set twice: {feature_sets}")
    if not cfg.bags:
        raise ValueError(
            f"task {cfg.task!r} has no bag source: pass task.bags=DIR (zoomfeat.extract output) or an instance CSV"
        )
    device = resolve_device(cfg.device)
    sources = {fs: resolve_source(cfg.bags, fs) for fs in feature_sets}
    load_kw = dict(
        in_memory=cfg.in_memory,
        dtype=cfg.dtype,
        memory_fraction=cfg.memory_fraction,
        csv_options=cfg.csv,
        progress=cfg.progress,
    )

    preloaded: dict[str, BagSet] = {}
    if cfg.labels:
        cohort = read_labels(
            cfg.labels, cfg.slide_col, cfg.case_col, cfg.label_col, cfg.label_map, cfg.threshold
        )
        cohort = check_coverage(cohort, sources, cfg.missing_bags)
        if cohort.empty:
            raise ValueError(f"{cfg.labels}: no labelled slide has a bag in every feature set")
    else:
        first = feature_sets[0]
        if not is_instance_csv(sources[first]):
            raise ValueError(
                f"task {cfg.task!r}: {sources[first]} is a bag directory, so the task needs a labels CSV (task.labels=)"
            )
        csv_kw = dict(cfg.csv)
        csv_kw.setdefault("label_map", cfg.label_map)
        preloaded[first] = load_feature_set(sources[first], first, None, **{**load_kw, "csv_options": csv_kw})
        cohort = preloaded[first].cohort()

    if cfg.splits:
        splits = load_splits(cfg.splits, cohort)
    else:
        splits = make_splits(
            cohort["slide_id"],
            cohort["case_id"],
            cohort["label"],
            cfg.folds,
            cfg.repeats,
            cfg.seed,
            cfg.val_fraction,
        )
    save_splits(splits, out_dir / "splits.csv")
    keys = fold_keys(splits)
    n_cases = cohort["case_id"].nunique()
    counts = cohort["label"].value_counts().sort_index().to_dict()
    log.info(
        "task %s: %d slides, %d patients, labels %s; %d folds x %d repeats; device %s",
        cfg.task,
        len(cohort),
        n_cases,
        counts,
        len({f for _, f in keys}),
        len({r for r, _ in keys}),
        device,
    )

    records: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    pred_path = out_dir / "predictions.csv"
    bar = tqdm(
        total=len(feature_sets) * len(keys), desc=f"bench {cfg.task}", unit="fold", disable=not cfg.progress
    )
    for fs in feature_sets:
        bags = preloaded.pop(fs, None) or load_feature_set(sources[fs], fs, cohort, **load_kw)
        feeder = BagFeeder(bags, device)
        log.info(
            "%s: %d bags, %d features, %d instances (%s, %s)",
            fs,
            len(bags),
            bags.dim,
            int(bags.n_instances.sum()),
            "in memory" if bags.in_memory else "read from disk",
            bags.source,
        )
        for repeat, fold in keys:
            parts = fold_parts(splits, repeat, fold)
            train_idx, val_idx, test_idx = (bags.index(parts[p]) for p in ("train", "val", "test"))
            if len(test_idx) == 0 or len(train_idx) == 0:
                warnings.warn(
                    f"{fs}: repeat {repeat} fold {fold} has no usable train or test bags; skipped",
                    BenchWarning,
                    stacklevel=2,
                )
                bar.update()
                continue
            result = train_fold(
                bags,
                train_idx,
                val_idx,
                cfg.mil,
                seed=fold_seed(cfg.seed, repeat, fold),
                device=device,
                progress=cfg.progress,
                desc=f"{fs} r{repeat} f{fold}",
            )
            probs, atts = predict(result.model, feeder, test_idx, attention=True, amp=cfg.mil.amp)
            y = bags.labels[test_idx]
            metrics = binary_metrics(y, probs)
            records.append(
                {
                    "feature_set": fs,
                    "repeat": repeat,
                    "fold": fold,
                    **metrics,
                    "n_train": len(train_idx),
                    "n_val": len(val_idx),
                    "n_test": len(test_idx),
                    "best_epoch": result.best_epoch,
                    "epochs_run": len(result.history),
                    "seconds": round(result.seconds, 2),
                }
            )
            fold_preds = []
            slides = {}
            for k, i in enumerate(test_idx):
                sid = bags.slide_ids[i]
                fold_preds.append(
                    {
                        "feature_set": fs,
                        "repeat": repeat,
                        "fold": fold,
                        "slide_id": sid,
                        "case_id": bags.case_ids[i],
                        "label": int(y[k]),
                        "prob": float(probs[k]),
                        "pred": int(probs[k] >= 0.5),
                        "n_instances": int(bags.n_instances[i]),
                    }
                )
                slides[sid] = {
                    "attention_logits": atts[k],
                    "coords": bags.get_coords(i),
                    "label": int(y[k]),
                    "prob": float(probs[k]),
                    "case_id": bags.case_ids[i],
                }
            predictions += fold_preds
            pd.DataFrame(predictions, columns=list(PREDICTION_COLUMNS)).to_csv(pred_path, index=False)
            if cfg.save_attention:
                write_attention(
                    out_dir / "attention" / fs / f"repeat{repeat}_fold{fold}.h5",
                    slides,
                    {"feature_set": fs, "repeat": repeat, "fold": fold, "task": cfg.task},
                )
            log.info(
                "%s repeat %d fold %d: %s (best epoch %d, %.1fs)",
                fs,
                repeat,
                fold,
                ", ".join(f"{m}={metrics[m]:.3f}" for m in METRICS),
                result.best_epoch,
                result.seconds,
            )
            bar.set_postfix(set=fs, auc=f"{metrics['auc']:.3f}")
            bar.update()
        del bags, feeder
    bar.close()
    if not records:
        raise RuntimeError("no fold could be run (every fold lacked train or test bags)")
    folds = pd.DataFrame(records)
    n_folds, n_repeats = len({f for _, f in keys}), len({r for r, _ in keys})
    title = f"{cfg.task}: {cfg.mil.name}, {n_folds}-fold patient-level CV x {n_repeats} repeat(s), seed {cfg.seed}"
    notes = [
        f"Cohort: {len(cohort)} bags (slides) from {n_cases} patients; label counts {counts}.",
        f"Model: torchmil ABMIL (gated={cfg.mil.gated}), hidden {list(cfg.mil.hidden)}, attention dim {cfg.mil.att_dim}, "
        f"AdamW lr {cfg.mil.lr:g} wd {cfg.mil.weight_decay:g}, up to {cfg.mil.epochs} epochs, early stopping on validation AUC "
        f"(patience {cfg.mil.patience}), class-balanced loss, instance standardisation={cfg.mil.standardize}.",
        "Decision threshold 0.5 on the predicted probability (balanced accuracy, F1, accuracy).",
    ]
    paths = write_report(
        out_dir,
        folds,
        cfg.baseline if cfg.baseline in feature_sets and len(feature_sets) > 1 else None,
        title,
        notes,
        feature_sets,
    )
    paths["predictions"] = pred_path
    paths["splits"] = out_dir / "splits.csv"
    run_info = {
        "task": cfg.task,
        "config": {
            **{k: v for k, v in asdict(cfg).items() if k != "mil"},
            "mil": cfg.mil.to_dict(),
            "out_dir": str(out_dir),
        },
        "sources": {fs: str(p) for fs, p in sources.items()},
        "cohort": {
            "slides": len(cohort),
            "patients": int(n_cases),
            "labels": {str(k): int(v) for k, v in counts.items()},
        },
        "device": str(device),
        "versions": _versions(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    paths["run"] = out_dir / "run.json"
    paths["run"].write_text(json.dumps(run_info, indent=2, default=str))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return {"folds": folds, "paths": paths, "out_dir": out_dir}
