"""MIL training for one cross-validation fold: the training loop, for every aggregator and task.

The network is :func:`zoomfeat.mil.aggregators.build_net` (``mil.arch``: ABMIL, CLAM-SB, TransMIL,
DSMIL, mean/max pooling, behind instance standardisation with the training fold's statistics);
bags reach it through :mod:`zoomfeat.mil.feeding`; what it learns (classification, regression,
survival) is an :class:`~zoomfeat.mil.objectives.Objective`.

Training (:class:`FoldTrainer`): AdamW, class-balanced binary cross-entropy

    L = sum_b w_{y_b} BCE(z_b, y_b) / sum_b w_{y_b},    w_c = n / (2 n_c)

over the bags ``b`` of a step (``n`` training bags, ``n_c`` of class ``c``: each class weighs half
of the loss whatever the imbalance). With k > 2 classes the head is a softmax over k logits and
the loss the same weighted mean of cross-entropies with ``w_c = n / (k n_c)`` (each class 1/k).
Bags are shuffled each epoch, early stopping on validation AUC (macro one-vs-rest for k > 2)
(ties broken by the validation loss; the best epoch's weights are kept); regression and survival
stop on validation R^2 and Harrell's C-index (:mod:`zoomfeat.mil.objectives`). Deterministic for a
given seed on a given machine. ``amp`` runs the forward pass in bf16 autocast where the device
has native bf16 (:func:`zoomfeat.mil.feeding.amp_precision`). See ``docs/ARCHITECTURE.md``
(MIL benchmark).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from zoomfeat.mil.abmil import instance_stats
from zoomfeat.mil.aggregators import build_net
from zoomfeat.mil.bagset import BagSet
from zoomfeat.mil.config import MILConfig

# benchmarks/mil_speed.py imports BagFeeder, amp_precision, instance_stats and predict from here
from zoomfeat.mil.feeding import BagFeeder, amp_precision, pad_batch, predict_logits, softmax_rows
from zoomfeat.mil.feeding import predict as predict  # re-exported (see above)
from zoomfeat.mil.objectives import Classification, Objective
from zoomfeat.mil.objectives import class_weights as class_weights  # re-exported (tests, callers)

__all__ = [
    "BagFeeder",
    "amp_precision",
    "pad_batch",
    "predict",
    "predict_logits",
    "softmax_rows",
    "train_fold",
]
from zoomfeat.runtime.device import autocast, resolve_device
from zoomfeat.runtime.errors import InputError
from zoomfeat.runtime.seeding import seed_everything


def _weighted_bce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights[y.long()]
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="none")
    return (loss * w).sum() / w.sum()


def _weighted_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted mean loss ``sum_b w_{y_b} l_b / sum_b w_{y_b}``: BCE on (B,) logits (binary),
    cross-entropy on (B, k) logits; ``y`` (B,), ``weights`` (k,). Returns a scalar."""
    if logits.ndim < 2:
        return _weighted_bce(logits, y, weights)
    w = weights[y.long()]
    loss = nn.functional.cross_entropy(logits.float(), y.long(), reduction="none")
    return (loss * w).sum() / w.sum()


@dataclass
class FoldResult:
    """A trained fold: the best model, its epoch, and the per-epoch history."""

    model: nn.Module
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0  # optimiser steps taken


class FoldTrainer:
    """Trains one MIL network on one cross-validation fold, in four steps (see :meth:`run`).

    1. set up: seed every RNG with the fold's seed, compute the training fold's instance
       statistics, build the aggregator, the AdamW optimiser and the objective (class weights,
       target scale), and hold every target on the device once;
    2. train one epoch: bags shuffled by the fold's NumPy generator, ``batch_size`` bags per
       step (``survival_batch_size`` for survival; stacked when of one size, else padded and
       masked), at most ``max_instances`` random instances per bag; the loss stays on the device
       and is read once per epoch (no host sync per step);
    3. validate: loss and score (AUC, R^2, C-index) of the validation bags in batched forward
       passes; the best epoch (highest score, ties: lower loss, never before ``warmup``) is kept,
       and training stops ``patience`` epochs after it (never before ``min_epochs``);
    4. keep the best epoch's weights (the last epoch's without validation bags).

    Every random draw comes from ``seed`` in this order, so a fold is reproducible on one machine.
    Arguments as :func:`train_fold`.
    """

    def __init__(
        self,
        bags: BagSet,
        train_idx: Sequence[int] | np.ndarray,
        val_idx: Sequence[int] | np.ndarray,
        cfg: MILConfig,
        *,
        seed: int = 0,
        device: str | torch.device = "auto",
        progress: bool = True,
        desc: str = "train",
        n_classes: int = 2,
        objective: Objective | None = None,
        targets: np.ndarray | None = None,
        callback_on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.bags, self.cfg, self.seed = bags, cfg, seed
        self.n_classes = int(n_classes)
        self.objective = objective or Classification(self.n_classes, cfg.class_balanced)
        self.targets = np.asarray(bags.labels) if targets is None else np.asarray(targets)
        self.device = resolve_device(device)
        self.precision = amp_precision(self.device, cfg.amp)
        self.train_idx = np.asarray(train_idx, dtype=np.int64)
        self.val_idx = np.asarray(val_idx, dtype=np.int64)
        if len(self.train_idx) == 0:
            raise InputError("no training bags in this fold")
        self.progress, self.desc = progress, desc
        self.callback = callback_on_epoch_end
        self.history: list[dict[str, float]] = []
        self.best_key = (-math.inf, -math.inf)
        self.best_epoch: int = -1
        self.best_state: dict[str, Any] | None = None
        self.steps = 0
        survival = type(self.objective).__name__ == "Survival"
        self.batch_size = max(cfg.batch_size, cfg.survival_batch_size) if survival else cfg.batch_size

    def run(self) -> FoldResult:
        """Steps 1-4; returns the trained fold."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        self.set_up()
        score_name = self.objective.score_name
        bar = tqdm(
            range(self.cfg.epochs), desc=self.desc, unit="epoch", leave=False, disable=not self.progress
        )
        for epoch in bar:
            epoch_start = time.perf_counter()
            record = {"epoch": epoch, "train_loss": self.train_epoch()}
            stop = False
            if len(self.val_idx):
                record.update(self.validate(epoch))
                if self.progress:
                    bar.set_postfix({score_name: f"{record[score_name]:.3f}", "best": self.best_epoch})
                stop = self.should_stop(epoch)
            record["seconds"] = time.perf_counter() - epoch_start
            self.history.append(record)
            if self.callback is not None:
                self.callback(epoch, record)
            if stop:
                break
        bar.close()
        self.keep_best()
        return FoldResult(
            model=self.model,
            best_epoch=int(self.best_epoch),
            history=self.history,
            seconds=time.perf_counter() - start,
            steps=self.steps,
        )

    def set_up(self) -> None:
        """Step 1: seeds, training-fold statistics, model, optimiser, objective, targets."""
        cfg, bags, device = self.cfg, self.bags, self.device
        seed_everything(self.seed)
        self.rng = np.random.default_rng(self.seed)
        mean = std = None
        if cfg.standardize:
            mean, std = instance_stats(bags, self.train_idx)
        self.model = build_net(bags.dim, cfg, mean=mean, std=std, n_out=self.objective.n_out).to(device)
        # foreach: one fused update per step instead of one small op per parameter tensor
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True
        )
        self.feeder = BagFeeder(bags, device)
        self.feeder.preload(np.concatenate([self.train_idx, self.val_idx]))
        self.objective.fit(self.targets, self.train_idx)
        self.labels = self.objective.tensor(self.targets, device)
        self.sizes = np.asarray(bags.n_instances, dtype=np.int64)

    def _instances(self, i: int) -> torch.Tensor:
        """Bag ``i``'s (N, D) features, or ``max_instances`` of them drawn at random (kept in order)."""
        x = self.feeder.get(i)
        n = self.cfg.max_instances
        if n and x.shape[0] > n:
            keep = torch.from_numpy(np.sort(self.rng.choice(x.shape[0], n, replace=False))).to(x.device)
            x = x.index_select(0, keep)
        return x

    def train_epoch(self) -> float:
        """Step 2: one pass over the shuffled training bags; returns the mean training loss."""
        self.model.train()
        order = self.train_idx[self.rng.permutation(len(self.train_idx))]
        total = torch.zeros((), device=self.device)
        for b in range(0, len(order), self.batch_size):
            chunk = order[b : b + self.batch_size]
            X, mask = pad_batch([self._instances(i) for i in chunk])
            y = self.labels[torch.from_numpy(chunk).to(self.device)]
            with autocast(self.device, self.precision):
                loss = self.model.training_loss(X, mask, y, self.objective.loss)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach().float() * len(chunk)
            self.steps += 1
        return float(total) / len(order)  # the one host sync of the epoch

    def validate(self, epoch: int) -> dict[str, float]:
        """Step 3: validation loss and score; remembers the best epoch's weights."""
        out, _ = predict_logits(self.model, self.feeder, self.val_idx, amp=self.cfg.amp)
        yv = self.targets[self.val_idx]
        with torch.no_grad():
            val_loss = float(
                self.objective.loss(
                    torch.as_tensor(out, dtype=torch.float32, device=self.device),
                    self.labels[torch.from_numpy(self.val_idx).to(self.device)],
                )
            )
        score = self.objective.score(yv, out)
        key = (score if not math.isnan(score) else -math.inf, -val_loss)
        if epoch >= self.cfg.warmup and key > self.best_key:
            self.best_key, self.best_epoch = key, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        return {"val_loss": val_loss, self.objective.score_name: score}

    def should_stop(self, epoch: int) -> bool:
        """Early stopping: ``patience`` epochs without a better one (after warmup and min_epochs)."""
        cfg = self.cfg
        return epoch - max(self.best_epoch, cfg.warmup - 1) >= cfg.patience and epoch + 1 >= cfg.min_epochs

    def keep_best(self) -> None:
        """Step 4: load the best epoch's weights (without validation: keep the last epoch)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        else:
            self.best_epoch = int(self.history[-1]["epoch"])
        self.model.eval()


def train_fold(
    bags: BagSet,
    train_idx: Sequence[int] | np.ndarray,
    val_idx: Sequence[int] | np.ndarray,
    cfg: MILConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    desc: str = "train",
    n_classes: int = 2,
    objective: Objective | None = None,
    targets: np.ndarray | None = None,
    callback_on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> FoldResult:
    """Train one MIL network on ``train_idx`` with early stopping on ``val_idx`` (positions in ``bags``).

    Args:
        bags: the feature set; ``train_idx``/``val_idx`` index its bags.
        cfg: aggregator and optimisation settings (``mil.arch``: :mod:`zoomfeat.mil.aggregators`).
        seed: the fold's seed (the same for every feature set: paired comparison).
        n_classes: 2 (binary, one logit) or k > 2 (softmax head, class-balanced cross-entropy).
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
        objective: what to learn (:func:`zoomfeat.mil.objectives.make_objective`); None:
            classification of ``bags.labels``.
        targets: every bag's target (regression (n,), survival (n, 2) time/event); None: labels.
        callback_on_epoch_end: called with ``(epoch, record)`` after every epoch.

    Returns:
        The best epoch's model (eval mode), its epoch, the per-epoch history, the seconds and the
        optimiser steps. Without validation bags it trains for ``cfg.epochs`` and keeps the last epoch.
    """
    return FoldTrainer(
        bags,
        train_idx,
        val_idx,
        cfg,
        seed=seed,
        device=device,
        progress=progress,
        desc=desc,
        n_classes=n_classes,
        objective=objective,
        targets=targets,
        callback_on_epoch_end=callback_on_epoch_end,
    ).run()
