"""The benchmark's fold loop: every feature set x aggregator x seed on every cross-validation fold.

Step 4 of :class:`~zoomfeat.mil.benchmark.Benchmark`. For each feature set (loaded one at a time,
so only one set's bags are in memory), each aggregator (``mil=[abmil,transmil]``), each seed
(``seeds=[0,1,2]``) and each fold ``(r, f)`` of the one split:

1. train the aggregator on the fold's training bags with early stopping on its validation bags
   (:func:`zoomfeat.mil.train.train_fold`), seeded with :func:`fold_seed` ``(seed, r, f)``, for
   the task's objective (:mod:`zoomfeat.mil.objectives`: classification, regression, survival);
2. predict the test bags (:func:`zoomfeat.mil.feeding.predict_logits`), with instance scores
   (attention, or gradient x input: :mod:`zoomfeat.mil.aggregators`);
3. record the fold's metrics (:mod:`zoomfeat.mil.metrics`), append its prediction rows to
   ``predictions.csv``, write its attention file (first seed) and its model as the fold finishes
   (into the run's staging directory, :mod:`zoomfeat.mil.run_dir`: a run stopped before its end
   publishes none of it, and ``out_dir`` keeps the previous run's outputs);
4. let the nested selection score its candidates on the validation bags (classification, first
   aggregator and seed; :meth:`zoomfeat.mil.selection.NestedSelection.observe`).

Paired design: the seed depends on ``(seed, r, f)`` only, never on the feature set or aggregator,
and every set sees the same train/validation/test slides, so the per-fold differences between two
sets under one aggregator measure the features, not the split or the initialisation, and the
paired tests (corrected resampled t, Wilcoxon, DeLong) apply. A fold without training or test bags
is skipped with a warning.

Output columns (stable; the report reads them):

* ``folds.csv`` rows (:func:`fold_record`): ``feature_set, repeat, fold``, the task's metrics
  (classification ``auc, balanced_accuracy, f1, accuracy``; regression ``r2, pearson_r, mae``;
  survival ``c_index, c_index_uno``), ``n_train, n_val, n_test, best_epoch, epochs_run, seconds,
  aggregator, seed``;
* ``predictions.csv`` rows (:func:`prediction_columns`): ``feature_set, repeat, fold, slide_id,
  case_id``, then classification ``label, prob, pred`` (+ ``prob_0..prob_{k-1}`` for k classes),
  regression ``target, pred``, survival ``time, event, risk``; then ``n_instances, aggregator,
  seed``;
* ``models/{aggregator}/{set}/seed{s}_repeat{r}_fold{f}.safetensors`` (``save_models``), with the
  aggregator settings in its metadata (:func:`save_fold_model`, :func:`load_fold_model`);
* ``attention/{set}/repeat{r}_fold{f}.h5`` (one aggregator) or
  ``attention/{set}/{aggregator}/repeat{r}_fold{f}.h5`` (several), first seed only.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from zoomfeat.mil.aggregators import MILNet, build_net
from zoomfeat.mil.attention import write_attention
from zoomfeat.mil.bagset import BagSet, BenchWarning
from zoomfeat.mil.config import BenchmarkConfig, MILConfig
from zoomfeat.mil.feeding import BagFeeder, predict_logits, softmax_rows
from zoomfeat.mil.metrics import (
    TASK_METRICS,
    binary_metrics,
    multiclass_metrics,
    regression_metrics,
    survival_metrics,
)
from zoomfeat.mil.objectives import Objective, Regression, make_objective
from zoomfeat.mil.report import write_csv
from zoomfeat.mil.selection import NestedSelection
from zoomfeat.mil.splits import fold_parts
from zoomfeat.mil.targets import target_array
from zoomfeat.mil.train import FoldResult, train_fold
from zoomfeat.runtime.atomic import atomic_path
from zoomfeat.runtime.errors import InputError

#: the task-specific columns of predictions.csv, after feature_set, repeat, fold, slide_id, case_id
TASK_PREDICTION_COLUMNS = {
    "classification": ("label", "prob", "pred"),
    "regression": ("target", "pred"),
    "survival": ("time", "event", "risk"),
}


def prediction_columns(task_type: str, n_classes: int = 2) -> list[str]:
    """``predictions.csv``'s columns for a task (module docstring)."""
    extra = [f"prob_{c}" for c in range(n_classes)] if task_type == "classification" and n_classes > 2 else []
    return [
        "feature_set",
        "repeat",
        "fold",
        "slide_id",
        "case_id",
        *TASK_PREDICTION_COLUMNS[task_type],
        "n_instances",
        "aggregator",
        "seed",
        *extra,
    ]


def save_fold_model(path: Path, model: MILNet, *, cfg: MILConfig, dim: int, task: dict[str, Any]) -> Path:
    """A fold's trained network as safetensors (no pickled code), its settings in the metadata:
    ``mil`` (the :class:`MILConfig` as JSON), ``dim``, ``n_out`` and ``task`` (type, target scale)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "mil": json.dumps(asdict(cfg)),
        "dim": str(dim),
        "n_out": str(model.n_out),
        "task": json.dumps(task),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_fold_model(path: str | Path) -> tuple[MILNet, dict[str, Any]]:
    """A model saved by :func:`save_fold_model` (eval mode) and its metadata (``mil``, ``task``)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "mil" not in meta:
        raise InputError(f"{path}: not a zoomfeat MIL fold model (no 'mil' metadata)")
    cfg = MILConfig(**json.loads(meta["mil"]))
    model = build_net(int(meta["dim"]), cfg, n_out=int(meta["n_out"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval(), {"mil": cfg, "task": json.loads(meta.get("task", "{}"))}


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
    *,
    repeat: int,
    fold: int,
    test_idx: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    atts: list[np.ndarray],
    task_type: str = "classification",
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One fold's test results: prediction rows and, per slide, its attention entry.

    Binary: ``prob`` = P(class 1), ``pred`` = prob >= 0.5. k > 2 (``probs`` (n, k)): ``pred`` =
    argmax, ``prob`` = its probability, and ``prob_0 .. prob_{k-1}``. Regression: ``target`` and
    ``pred`` (``probs`` holds the predictions); survival: ``time``, ``event`` and ``risk``
    (``probs`` holds the risks, ``y`` (n, 2) time/event).

    Args:
        bags: the feature set.
        repeat, fold: the fold's key.
        test_idx: (n,) positions of the test bags in ``bags``.
        y: (n,) their labels or targets, (n, 2) for survival.
        probs: (n,) or (n, k) probabilities, or (n,) predictions / risks.
        atts: n instance-score arrays, (N_k,) each.
        task_type: ``task.type``.

    Returns:
        ``(rows, slides)``: rows with :func:`prediction_columns` (without aggregator and seed);
        slides ``{slide_id: entry}`` as :func:`zoomfeat.mil.attention.write_attention` takes them.
    """
    rows, slides = [], {}
    for k, i in enumerate(test_idx):
        sid = bags.slide_ids[i]
        per_class: dict[str, Any] = {}
        if task_type == "regression":
            values: dict[str, Any] = {"target": float(y[k]), "pred": float(probs[k])}
            label: Any = float(y[k])
            prob: Any = float(probs[k])
        elif task_type == "survival":
            values = {"time": float(y[k][0]), "event": int(y[k][1]), "risk": float(probs[k])}
            label, prob = int(y[k][1]), float(probs[k])
        else:
            if probs.ndim == 2:
                pred = int(np.argmax(probs[k]))
                prob = float(probs[k, pred])
                per_class = {f"prob_{c}": float(v) for c, v in enumerate(probs[k])}
            else:
                pred, prob = int(probs[k] >= 0.5), float(probs[k])
            label = int(y[k])
            values = {"label": label, "prob": prob, "pred": pred}
        rows.append(
            {
                "feature_set": bags.feature_set,
                "repeat": repeat,
                "fold": fold,
                "slide_id": sid,
                "case_id": bags.case_ids[i],
                **values,
                "n_instances": int(bags.n_instances[i]),
                **per_class,
            }
        )
        slides[sid] = {
            "attention_logits": atts[k],
            "coords": bags.get_coords(i),
            "label": label,
            "prob": np.asarray(probs[k], dtype=np.float64) if probs.ndim == 2 else prob,
            "case_id": bags.case_ids[i],
        }
    return rows, slides


def fold_record(
    fs: str,
    *,
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
    """Runs every (feature set, aggregator, seed, repeat, fold); :meth:`run` fills :attr:`records`
    (``folds.csv`` rows), :attr:`predictions` (``predictions.csv`` rows) and :attr:`provenance`.

    Args:
        cfg: the run's settings (``mil`` / ``aggregators``, ``seeds``, ``progress``,
            ``save_attention``, ``save_models``, ``task``).
        splits: the split table (:mod:`zoomfeat.mil.splits`).
        keys: its ``(repeat, fold)`` keys, in order.
        device: where to train.
        n_classes: k (2: binary; ignored for regression and survival).
        pred_columns: the columns of ``predictions.csv`` for a classification task (the
            task-type columns of :func:`prediction_columns` otherwise).
        selection: the nested selection (observes every fold's validation bags).
        out_dir: the run's output directory.
        cohort: the cohort table, holding ``target`` (regression) or ``time``/``event``
            (survival) for those task types.
    """

    def __init__(
        self,
        cfg: BenchmarkConfig,
        *,
        splits: pd.DataFrame,
        keys: Sequence[tuple[int, int]],
        device: torch.device,
        n_classes: int,
        pred_columns: Sequence[str],
        selection: NestedSelection,
        out_dir: Path,
        cohort: pd.DataFrame | None = None,
    ) -> None:
        self.cfg, self.splits, self.keys, self.device = cfg, splits, list(keys), device
        self.task_type = cfg.task.type
        self.n_classes = n_classes
        cols = prediction_columns(self.task_type, n_classes)
        if self.task_type == "classification":  # the caller's columns first, ours after
            cols = list(pred_columns) + [c for c in cols if c not in pred_columns]
        self.pred_columns = cols
        self.selection, self.out_dir = selection, Path(out_dir)
        self.cohort = cohort
        self.aggregators = cfg.mil_list
        self.seeds = cfg.run_seeds
        self.records: list[dict[str, Any]] = []
        self.predictions: list[dict[str, Any]] = []
        self.provenance: dict[str, dict[str, Any]] = {}

    @property
    def pred_path(self) -> Path:
        """``predictions.csv``, rewritten after every fold."""
        return self.out_dir / "predictions.csv"

    def run(self, feature_sets: Sequence[str], load: Callable[[str], BagSet], cohort_source: str) -> None:
        """Every fold of every feature set, aggregator and seed, one set in memory at a time.

        Args:
            feature_sets: the sets, in order.
            load: a set's name -> its bags.
            cohort_source: what the cohort came from (named when no fold could run).

        Raises:
            InputError: no fold of any set had training and test bags.
        """
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(feature_sets) * len(self.keys) * len(self.aggregators) * len(self.seeds),
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
            targets = (
                np.asarray(bags.labels)
                if self.task_type == "classification" or self.cohort is None
                else target_array(self.cohort, list(bags.slide_ids), self.task_type)
            )
            for a, mil in enumerate(self.aggregators):
                for s, seed in enumerate(self.seeds):
                    for repeat, fold in self.keys:
                        self.run_fold(bags, feeder, repeat, fold, mil=mil, seed=seed, targets=targets,
                                      first=(a == 0 and s == 0), attention=(s == 0))  # fmt: skip
                        self.bar.update()
            del bags, feeder
        self.bar.close()
        if not self.records:
            raise InputError(f"{cohort_source}: no fold could be run (every fold lacked train or test bags)")

    def fold_metrics(
        self, objective: Objective, y: np.ndarray, out: np.ndarray, train_y: np.ndarray
    ) -> tuple[dict[str, float], np.ndarray]:
        """The fold's test metrics and the predictions written (probabilities, values or risks)."""
        if self.task_type == "regression":
            assert isinstance(objective, Regression)
            pred = objective.predict(out)
            return regression_metrics(y, pred), pred
        if self.task_type == "survival":
            return survival_metrics(
                y[:, 0], y[:, 1], out, train_time=train_y[:, 0], train_event=train_y[:, 1]
            ), out
        if out.ndim == 2:
            probs = softmax_rows(out)
            return multiclass_metrics(y, probs), probs
        probs = 1.0 / (1.0 + np.exp(-out))
        return binary_metrics(y, probs), probs

    def run_fold(
        self,
        bags: BagSet,
        feeder: BagFeeder,
        repeat: int,
        fold: int,
        *,
        mil: MILConfig | None = None,
        seed: int | None = None,
        targets: np.ndarray | None = None,
        first: bool = True,
        attention: bool = True,
    ) -> None:
        """Train and test one (feature set, aggregator, seed, repeat, fold); record its metrics,
        predictions, attention and model.

        Args:
            bags: the feature set.
            feeder: its bags on the device.
            repeat, fold: the fold's key in the split.
            mil: the aggregator (default ``cfg.mil``); seed: the run seed (default ``cfg.seed``).
            targets: every bag's target (default: the labels).
            first: the first aggregator and seed (the nested selection observes this one).
            attention: write this fold's attention file (first seed).
        """
        fs, cfg = bags.feature_set, self.cfg
        mil = mil or cfg.mil
        seed = cfg.seed if seed is None else seed
        targets = np.asarray(bags.labels) if targets is None else targets
        parts = fold_parts(self.splits, repeat, fold)
        train_idx, val_idx, test_idx = (bags.index(parts[p]) for p in ("train", "val", "test"))
        if len(test_idx) == 0 or len(train_idx) == 0:
            warnings.warn(
                f"{fs}: repeat {repeat} fold {fold} has no usable train or test bags; skipped",
                BenchWarning,
                stacklevel=2,
            )
            return
        objective = make_objective(
            self.task_type, n_classes=self.n_classes, balanced=mil.class_balanced, loss=cfg.task.loss
        )
        several = len(self.aggregators) > 1
        tag = f"{fs}{' ' + mil.name if several else ''}{f' s{seed}' if len(self.seeds) > 1 else ''}"
        result = train_fold(
            bags,
            train_idx,
            val_idx,
            mil,
            seed=fold_seed(seed, repeat, fold),
            device=self.device,
            progress=cfg.progress,
            desc=f"{tag} r{repeat} f{fold}",
            n_classes=self.n_classes,
            objective=objective,
            targets=targets,
        )
        want_scores = cfg.save_attention and attention
        out, atts = predict_logits(result.model, feeder, test_idx, attention=want_scores, amp=mil.amp)
        y = targets[test_idx]
        if first and self.task_type == "classification":
            self.selection.observe(
                fs, repeat=repeat, fold=fold, model=result.model, feeder=feeder, val_idx=val_idx
            )
        metrics, values = self.fold_metrics(objective, y, out, targets[train_idx])
        record = fold_record(
            fs,
            repeat=repeat,
            fold=fold,
            metrics=metrics,
            result=result,
            train_idx=train_idx,
            val_idx=val_idx,
            test_idx=test_idx,
        )
        record.update(aggregator=mil.name, seed=int(seed))
        self.records.append(record)
        rows, slides = fold_outputs(
            bags,
            repeat=repeat,
            fold=fold,
            test_idx=test_idx,
            y=y,
            probs=values,
            atts=atts or [np.zeros(0)] * len(test_idx),
            task_type=self.task_type,
        )
        for row in rows:
            row.update(aggregator=mil.name, seed=int(seed))
        self.predictions += rows
        write_csv(pd.DataFrame(self.predictions, columns=self.pred_columns), self.pred_path)
        if want_scores:
            sub = Path(fs) / mil.name if several else Path(fs)
            write_attention(
                self.out_dir / "attention" / sub / f"repeat{repeat}_fold{fold}.h5",
                slides,
                {"feature_set": fs, "repeat": repeat, "fold": fold, "task": cfg.task.name,
                 "task_type": self.task_type, "aggregator": mil.name, "score_kind": result.model.score_kind,
                 "seed": int(seed)},
            )  # fmt: skip
        if cfg.save_models:
            task = {"type": self.task_type, "n_classes": self.n_classes}
            if isinstance(objective, Regression):
                task.update(target_mean=objective.mean, target_std=objective.std)
            save_fold_model(
                self.out_dir / "models" / mil.name / fs / f"seed{seed}_repeat{repeat}_fold{fold}.safetensors",
                cast(MILNet, result.model),
                cfg=mil,
                dim=bags.dim,
                task=task,
            )
        names = TASK_METRICS[self.task_type]
        log.info(
            "%s repeat %d fold %d: %s (best epoch %d, %.1fs)",
            tag,
            repeat,
            fold,
            ", ".join(f"{m}={metrics[m]:.3f}" for m in names),
            result.best_epoch,
            result.seconds,
        )
        self.bar.set_postfix(set=tag, **{names[0]: f"{metrics[names[0]]:.3f}"})
