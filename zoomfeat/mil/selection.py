"""Nested recipe selection: per outer fold, choose a feature set on inner validation data only.

Why. When many candidate recipes (feature sets) are benchmarked on the same folds, quoting the
test metrics of the best one is optimistic: the maximum over m noisy test estimates is biased
upwards (the winner's curse), and the choice has looked at the test folds. Nested selection
(Varma & Simon 2006; Cawley & Talbot 2010) keeps the choice inside each training fold.

How. Outer fold ``(r, f)`` has three patient-disjoint parts (``splits.csv``): train ``T``,
inner validation ``V`` and test ``S``. Every candidate ``c`` trains on ``T`` (early stopping on
``V``, as every set does) and is scored on ``V`` with the early-stopped model:

    s_c(r, f) = metric(y_V, p_c(V))                         metric in {auc, balanced_accuracy, f1, accuracy}
    c*(r, f)  = argmax_c s_c(r, f)                          (ties: first in the candidates' order; NaN never wins)
    p_sel(S)  = p_{c*(r, f)}(S)                             the selected row's test predictions

:func:`choose_candidate` receives the validation scores and nothing else, so the choice cannot
depend on ``S``. The selected row's per-fold metrics are those of ``p_sel`` on ``S``: an honest
estimate of "pick a recipe by inner validation, then deploy it". It then goes through the same
summary, 95% CIs and paired tests against the baseline as every feature set (same folds, same
seeds per fold: a paired comparison). ``s_c`` comes from the epoch that ``V`` itself chose, so it
is optimistic for every candidate alike: it ranks candidates; only the test metrics estimate
performance.

:class:`NestedSelection` is what :class:`~zoomfeat.mil.benchmark.Benchmark` holds: it adds the
candidates to the benchmarked sets, scores each candidate's validation part as its folds finish
(:meth:`NestedSelection.observe`), and afterwards adds the selected row to the fold table and the
predictions and writes ``selection.csv`` and the recipe heatmap
(:mod:`zoomfeat.mil.recipes_report`). With no candidates it does nothing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.mil.bagset import BenchWarning
from zoomfeat.mil.config import BenchmarkConfig
from zoomfeat.mil.feeding import BagFeeder, predict
from zoomfeat.mil.metrics import binary_metrics, multiclass_metrics
from zoomfeat.mil.recipes_report import write_recipes_heatmap
from zoomfeat.mil.report import write_csv
from zoomfeat.mil.sources import expand_feature_sets
from zoomfeat.mil.splits import fold_keys, fold_parts
from zoomfeat.runtime.errors import ConfigError, InputError


def choose_candidate(val_scores: Mapping[str, float]) -> str:
    """The candidate with the highest validation score: the whole of the choice.

    Args:
        val_scores: candidate -> its score on the inner validation part (higher is better), in
            the candidates' order. Nothing else reaches the choice: no test data can.

    Returns:
        The best candidate; ties go to the first in order; NaN scores (e.g. AUC of a one-class
        validation part) never win; when every score is NaN, the first candidate.
    """
    ordered = [(name, float(score)) for name, score in val_scores.items()]
    if not ordered:
        raise ValueError("no candidates to choose from")
    finite = [(name, s) for name, s in ordered if not math.isnan(s)]
    if not finite:
        return ordered[0][0]
    best = max(s for _, s in finite)
    return next(name for name, s in finite if s == best)


def validation_scores(model: Any, feeder: BagFeeder, val_idx: np.ndarray, amp: bool) -> dict[str, float]:
    """The metrics (:data:`~zoomfeat.mil.metrics.METRICS`) of a trained model on its fold's validation part.

    Args:
        model: the early-stopped ABMIL of one (candidate, fold).
        feeder: the candidate's bags (``feeder.bags``); ``val_idx`` (n_val,) positions of the
            validation bags in them.
        amp: ``mil.amp`` (the precision the test predictions use too).

    Returns:
        ``{metric: value}`` on the validation bags: binary metrics for probabilities (n_val,),
        k-class ones for (n_val, k) (:func:`~zoomfeat.mil.feeding.predict`).
    """
    probs, _ = predict(model, feeder, val_idx, attention=False, amp=amp)
    y = feeder.bags.labels[val_idx]
    return binary_metrics(y, probs) if probs.ndim == 1 else multiclass_metrics(y, probs)


class NestedSelection:
    """The ``selection`` section at work inside one benchmark run (see the module header)."""

    def __init__(
        self, candidates: Sequence[str], metric: str = "auc", name: str = "selected", amp: bool = True
    ) -> None:
        self.candidates = list(candidates)
        self.metric, self.name, self.amp = metric, name, amp
        #: (repeat, fold) -> candidate -> {metric: validation value}
        self.val: dict[tuple[int, int], dict[str, dict[str, float]]] = {}
        self._choices: dict[tuple[int, int], str] | None = None  # choices(), once computed

    @classmethod
    def plan(cls, cfg: BenchmarkConfig, feature_sets: Sequence[str]) -> NestedSelection:
        """``cfg.selection`` with its candidates (names or globs, as ``feature_sets``) expanded
        against ``task.bags``; ``feature_sets``: the benchmark's own sets, already expanded."""
        section = cfg.selection
        candidates = (
            expand_feature_sets(list(section.candidates), cfg.task.bags) if section.candidates else []
        )
        if section.name in candidates or section.name in feature_sets:
            raise ConfigError(
                f"selection.name {section.name!r} is also a feature set; give the selected row another name"
            )
        return cls(candidates, section.metric, section.name, cfg.mil.amp)

    @property
    def active(self) -> bool:
        return bool(self.candidates)

    def feature_sets(self, feature_sets: Sequence[str]) -> list[str]:
        """The sets to benchmark: ``feature_sets``, then the candidates not among them."""
        return list(feature_sets) + [c for c in self.candidates if c not in feature_sets]

    def check_splits(self, splits: pd.DataFrame) -> None:
        """Every outer fold needs validation slides to choose on (an ``InputError`` naming the fold)."""
        if not self.active:
            return
        for repeat, fold in fold_keys(splits):
            if not fold_parts(splits, repeat, fold)["val"]:
                raise InputError(
                    f"selection: repeat {repeat} fold {fold} has no validation slides to choose a candidate on; "
                    f"use cv.val_fraction > 0 without cv.splits, or a splits file with 'val' rows in every fold"
                )

    def observe(
        self,
        fs: str,
        *,
        repeat: int,
        fold: int,
        model: Any,
        feeder: BagFeeder,
        val_idx: np.ndarray,
    ) -> None:
        """Score candidate ``fs``'s model of fold ``(repeat, fold)`` on that fold's validation part
        (:func:`validation_scores`; ``val_idx`` (n_val,) positions in ``feeder.bags``); other sets
        are ignored."""
        if fs not in self.candidates:
            return
        if len(val_idx) == 0:
            raise InputError(f"selection: {fs} repeat {repeat} fold {fold} has no validation bags to score")
        scores = validation_scores(model, feeder, val_idx, self.amp)
        self.val.setdefault((int(repeat), int(fold)), {})[fs] = scores
        self._choices = None  # choices() is computed once the scores are in

    def choices(self) -> dict[tuple[int, int], str]:
        """(repeat, fold) -> the chosen candidate, for every fold all candidates were scored on (a fold
        where a candidate could not be trained is left out of the selected row, with a warning)."""
        if self._choices is not None:
            return self._choices
        out = {}
        for key, per_set in sorted(self.val.items()):
            missing = [c for c in self.candidates if c not in per_set]
            if missing:
                warnings.warn(
                    f"selection: repeat {key[0]} fold {key[1]}: {', '.join(missing)} not scored (no usable "
                    f"training or test bags in this fold); the fold is left out of the {self.name} row, so its "
                    "paired tests use the other folds only",
                    BenchWarning,
                    stacklevel=2,
                )
            else:
                out[key] = choose_candidate({c: per_set[c][self.metric] for c in self.candidates})
                if all(math.isnan(per_set[c][self.metric]) for c in self.candidates):
                    warnings.warn(
                        f"selection: repeat {key[0]} fold {key[1]}: every candidate's validation {self.metric} "
                        f"is NaN (one class in the validation part?); the first candidate is used",
                        BenchWarning,
                        stacklevel=2,
                    )
        self._choices = out
        return out

    def table(self) -> pd.DataFrame:
        """``selection.csv``: repeat, fold, metric, chosen, then each candidate's validation score."""
        rows = [
            {
                "repeat": r,
                "fold": f,
                "metric": self.metric,
                "chosen": chosen,
                **{c: self.val[(r, f)][c][self.metric] for c in self.candidates},
            }
            for (r, f), chosen in self.choices().items()
        ]
        return pd.DataFrame(rows, columns=["repeat", "fold", "metric", "chosen", *self.candidates])

    def add_rows(self, folds: pd.DataFrame, predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The fold table and predictions with the selected row added: per fold, a copy of the
        chosen candidate's fold record and test predictions under ``selection.name``."""
        if not self.active or folds.empty:
            return folds, predictions
        fold_rows, pred_rows = [], []
        for (r, f), chosen in self.choices().items():
            fold_rows.append(folds[_at(folds, chosen, r, f)].assign(feature_set=self.name))
            pred_rows.append(predictions[_at(predictions, chosen, r, f)].assign(feature_set=self.name))
        if not fold_rows:
            return folds, predictions
        return (
            pd.concat([folds, *fold_rows], ignore_index=True),
            pd.concat([predictions, *pred_rows], ignore_index=True),
        )

    def report_sets(self, feature_sets: Sequence[str]) -> list[str]:
        """The report's rows: the benchmarked sets, then the selected row."""
        return list(feature_sets) + ([self.name] if self.active else [])

    def notes(self) -> list[str]:
        """summary.md lines saying how the selected row was made and what each fold chose."""
        if not self.active:
            return []
        chosen = self.choices()
        counts = pd.Series(list(chosen.values()), dtype=object).value_counts()
        listed = ", ".join(f"{c} {counts.get(c, 0)}/{len(chosen)}" for c in self.candidates)
        return [
            f"{self.name}: nested selection among {len(self.candidates)} candidate(s); in each outer fold the "
            f"candidate with the best inner-validation {self.metric} (the test fold unseen) gives the test "
            f"predictions. Folds chosen per candidate: {listed} (selection.csv; recipes_heatmap.png)."
        ]

    def write(
        self,
        out_dir: Path,
        folds: pd.DataFrame,
        *,
        predictions: pd.DataFrame,
        sources: Mapping[str, Path],
        title: str = "",
    ) -> dict[str, Path]:
        """Write ``selection.csv``, ``predictions.csv`` (with the selected row) and, when the
        candidates carry recipe attributes, ``recipes_heatmap.png`` + ``.csv``; returns their paths."""
        if not self.active:
            return {}
        out_dir = Path(out_dir)
        paths = {
            "selection": write_csv(self.table(), out_dir / "selection.csv"),
            "predictions": write_csv(predictions, out_dir / "predictions.csv"),
        }
        counts = pd.Series(list(self.choices().values()), dtype=object).value_counts().to_dict()
        heat = write_recipes_heatmap(
            out_dir,
            folds,
            sources={c: sources[c] for c in self.candidates},
            chosen=counts,
            n_choices=len(self.choices()),
            title=title,
        )
        paths.update(heat)
        return paths


def _at(frame: pd.DataFrame, fs: str, repeat: int, fold: int) -> pd.Series:
    """Rows of ``frame`` for (feature set, repeat, fold)."""
    return (frame["feature_set"] == fs) & (frame["repeat"] == repeat) & (frame["fold"] == fold)
