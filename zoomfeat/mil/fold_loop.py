"""The benchmark's fold loop: every feature set trained and tested on every cross-validation fold.

Step 4 of :class:`~zoomfeat.mil.benchmark.Benchmark`. For each feature set (loaded one at a time,
so only one set's bags are in memory) and each fold ``(r, f)`` of the one split:

1. train one ABMIL on the fold's training bags with early stopping on its validation bags
   (:func:`zoomfeat.mil.train.train_fold`), seeded with :func:`fold_seed` ``(seed, r, f)``;
2. predict the test bags (:func:`zoomfeat.mil.feeding.predict`), with attention logits;
3. record the fold's metrics (:mod:`zoomfeat.mil.metrics`: binary, or macro for k > 2 classes),
   append its prediction rows to ``predictions.csv`` and write its attention file
   (:mod:`zoomfeat.mil.attention`) as the fold finishes, so a stopped run keeps what it did;
4. let the nested selection score its candidates on the validation bags
   (:meth:`zoomfeat.mil.selection.NestedSelection.observe`).

Paired design: the seed depends on ``(seed, r, f)`` only, never on the feature set, and every set
sees the same train/validation/test slides, so the per-fold differences between two sets measure
the features, not the split or the initialisation, and the paired tests (corrected resampled t,
Wilcoxon) apply. A fold without training or test bags is skipped with a warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from zoomfeat.mil.attention import write_attention
from zoomfeat.mil.bagset import BagSet, BenchWarning
from zoomfeat.mil.config import BenchmarkConfig
from zoomfeat.mil.feeding import BagFeeder, predict
from zoomfeat.mil.metrics import METRICS, binary_metrics, multiclass_metrics
from zoomfeat.mil.report import write_csv
from zoomfeat.mil.selection import NestedSelection
from zoomfeat.mil.splits import fold_parts
from zoomfeat.mil.train import FoldResult, train_fold
from zoomfeat.runtime.errors import InputError

log = logging.getLogger(__name__)


def fold_seed(seed: int, repeat: int, fold: int) -> int:
    """The training seed of one fold: the same for every feature set (paired comparison).

    Args:
        seed: the run's ``seed``.
        repeat, fold: the fold's key.

    Returns:
        A 32-bit seed from NumPy's ``SeedSequence([seed, repeat, fold])`` (well mixed: nearby
        keys give unrelated streams).
    """
    return int(np.random.SeedSequence([int(seed), int(repeat), int(fold)]).generate_state(1)[0])


def fold_outputs(
    bags: BagSet,
    repeat: int,
    fold: int,
    test_idx: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    atts: list[np.ndarray],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One fold's test results: prediction rows and, per slide, its attention entry.

    Binary: ``prob`` = P(class 1), ``pred`` = prob >= 0.5. k > 2 (``probs`` (n, k)): ``pred`` =
    argmax, ``prob`` = its probability, and ``prob_0 .. prob_{k-1}``.

    Args:
        bags: the feature set.
        repeat, fold: the fold's key.
        test_idx: (n,) positions of the test bags in ``bags``.
        y: (n,) their labels.
        probs: (n,) or (n, k) probabilities (:func:`zoomfeat.mil.feeding.predict`).
        atts: n attention-logit arrays, (N_k,) each.

    Returns:
        ``(rows, slides)``: rows with :data:`zoomfeat.mil.report.PREDICTION_COLUMNS` (+ ``prob_c``
        for k > 2); slides ``{slide_id: entry}`` as :func:`zoomfeat.mil.attention.write_attention`
        takes them.
    """
    rows, slides = [], {}
    for k, i in enumerate(test_idx):
        sid = bags.slide_ids[i]
        if probs.ndim == 2:
            pred = int(np.argmax(probs[k]))
            prob, per_class = float(probs[k, pred]), {f"prob_{c}": float(v) for c, v in enumerate(probs[k])}
        else:
            pred, prob, per_class = int(probs[k] >= 0.5), float(probs[k]), {}
        rows.append(
            {
                "feature_set": bags.feature_set,
                "repeat": repeat,
                "fold": fold,
                "slide_id": sid,
                "case_id": bags.case_ids[i],
                "label": int(y[k]),
                "prob": prob,
                "pred": pred,
                "n_instances": int(bags.n_instances[i]),
                **per_class,
            }
        )
        slides[sid] = {
            "attention_logits": atts[k],
            "coords": bags.get_coords(i),
            "label": int(y[k]),
            "prob": np.asarray(probs[k], dtype=np.float64) if probs.ndim == 2 else prob,
            "case_id": bags.case_ids[i],
        }
    return rows, slides


def fold_record(
    fs: str,
    repeat: int,
    fold: int,
    metrics: dict[str, float],
    result: FoldResult,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
) -> dict[str, Any]:
    """One row of ``folds.csv``: the fold's key, its test metrics, its part sizes and its training
    (best epoch, epochs run, seconds)."""
    return {
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


class FoldLoop:
    """Runs every (feature set, repeat, fold); :meth:`run` fills :attr:`records` (``folds.csv``
    rows), :attr:`predictions` (``predictions.csv`` rows) and :attr:`provenance` (per set).

    Args:
        cfg: the run's settings (``mil``, ``seed``, ``progress``, ``save_attention``, ``task.name``).
        splits: the split table (:mod:`zoomfeat.mil.splits`).
        keys: its ``(repeat, fold)`` keys, in order.
        device: where to train.
        n_classes: k (2: binary).
        pred_columns: the columns of ``predictions.csv``.
        selection: the nested selection (observes every fold's validation bags).
        out_dir: the run's output directory.
    """

    def __init__(
        self,
        cfg: BenchmarkConfig,
        splits: pd.DataFrame,
        keys: Sequence[tuple[int, int]],
        device: torch.device,
        n_classes: int,
        pred_columns: Sequence[str],
        selection: NestedSelection,
        out_dir: Path,
    ) -> None:
        self.cfg, self.splits, self.keys, self.device = cfg, splits, list(keys), device
        self.n_classes, self.pred_columns = n_classes, list(pred_columns)
        self.selection, self.out_dir = selection, Path(out_dir)
        self.records: list[dict[str, Any]] = []
        self.predictions: list[dict[str, Any]] = []
        self.provenance: dict[str, dict[str, Any]] = {}

    @property
    def pred_path(self) -> Path:
        """``predictions.csv``, rewritten after every fold."""
        return self.out_dir / "predictions.csv"

    def run(self, feature_sets: Sequence[str], load: Callable[[str], BagSet], cohort_source: str) -> None:
        """Every fold of every feature set, one set in memory at a time.

        Args:
            feature_sets: the sets, in order.
            load: a set's name -> its bags.
            cohort_source: what the cohort came from (named when no fold could run).

        Raises:
            InputError: no fold of any set had training and test bags.
        """
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(feature_sets) * len(self.keys),
            desc=f"bench {self.cfg.task.name}",
            unit="fold",
            disable=not self.cfg.progress,
        )
        for fs in feature_sets:
            bags = load(fs)
            log.info(
                "%s: %d bags, %d features, %d instances (%s, %s)",
                fs,
                len(bags),
                bags.dim,
                int(bags.n_instances.sum()),
                "in memory" if bags.in_memory else "read from disk",
                bags.source,
            )
            self.provenance[fs] = dict(bags.provenance)
            feeder = BagFeeder(bags, self.device)
            for repeat, fold in self.keys:
                self.run_fold(bags, feeder, repeat, fold)
                self.bar.update()
            del bags, feeder
        self.bar.close()
        if not self.records:
            raise InputError(f"{cohort_source}: no fold could be run (every fold lacked train or test bags)")

    def run_fold(self, bags: BagSet, feeder: BagFeeder, repeat: int, fold: int) -> None:
        """Train and test one (feature set, repeat, fold); record its metrics and predictions.

        Args:
            bags: the feature set.
            feeder: its bags on the device.
            repeat, fold: the fold's key in the split.
        """
        fs, cfg = bags.feature_set, self.cfg
        parts = fold_parts(self.splits, repeat, fold)
        train_idx, val_idx, test_idx = (bags.index(parts[p]) for p in ("train", "val", "test"))
        if len(test_idx) == 0 or len(train_idx) == 0:
            warnings.warn(
                f"{fs}: repeat {repeat} fold {fold} has no usable train or test bags; skipped",
                BenchWarning,
                stacklevel=2,
            )
            return
        result = train_fold(
            bags,
            train_idx,
            val_idx,
            cfg.mil,
            seed=fold_seed(cfg.seed, repeat, fold),
            device=self.device,
            progress=cfg.progress,
            desc=f"{fs} r{repeat} f{fold}",
            n_classes=self.n_classes,
        )
        probs, atts = predict(result.model, feeder, test_idx, attention=True, amp=cfg.mil.amp)
        y = bags.labels[test_idx]
        self.selection.observe(fs, repeat, fold, result.model, feeder, val_idx)
        metrics = binary_metrics(y, probs) if self.n_classes == 2 else multiclass_metrics(y, probs)
        self.records.append(fold_record(fs, repeat, fold, metrics, result, train_idx, val_idx, test_idx))
        rows, slides = fold_outputs(bags, repeat, fold, test_idx, y, probs, atts)
        self.predictions += rows
        write_csv(pd.DataFrame(self.predictions, columns=self.pred_columns), self.pred_path)
        if cfg.save_attention:
            write_attention(
                self.out_dir / "attention" / fs / f"repeat{repeat}_fold{fold}.h5",
                slides,
                {"feature_set": fs, "repeat": repeat, "fold": fold, "task": cfg.task.name},
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
        self.bar.set_postfix(set=fs, auc=f"{metrics['auc']:.3f}")
