"""What a fold trains for (``task.type``): the targets, the loss and the validation score.

An :class:`Objective` turns a fold's targets into tensors, gives the training loss of a batch of
network outputs, the validation score that early stopping maximises, and turns raw outputs into
predictions:

* :class:`Classification` -- class-weighted BCE (one logit) or cross-entropy (k logits); the
  validation score is the AUC (macro one-vs-rest for k classes).
* :class:`Regression` -- the target standardised with the *training fold's* mean and std,
  ``u = (y - m) / s``; loss MSE ``mean (f - u)^2`` or Huber (delta 1, on the standardised scale);
  prediction ``m + s f``; validation score ``R^2 = 1 - sum (y - yhat)^2 / sum (y - mean y)^2``.
* :class:`Survival` -- the network output is a log-risk ``eta``; Cox's negative log partial
  likelihood (Breslow's handling of ties) over the bags of a step,

      L = -(1 / n_events) sum_{i: delta_i = 1} [eta_i - log sum_{j: t_j >= t_i} exp(eta_j)],

  (zero for a step without an event); validation score Harrell's C-index; prediction = the risk
  ``eta`` (higher: earlier event).

The survival loss ranks the bags of one step against each other, so survival trains
``mil.survival_batch_size`` bags per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def class_weights(labels: np.ndarray, balanced: bool = True, n_classes: int = 2) -> np.ndarray:
    """Per-class loss weights: ``n / (k n_c)`` (each of the k classes contributes 1/k), or ones.

    Binary: ones when a class is absent. ``n_classes > 2``: the k present classes share the loss
    equally; an absent class keeps weight 1 (no bag uses it).

    Args:
        labels: (n,) integer labels of the training bags.
        balanced: ``mil.class_balanced``; False gives ones.
        n_classes: k.

    Returns:
        (k,) float64 weights ``w_c``.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    if n_classes == 2:
        if not balanced or (counts == 0).any():
            return np.ones(2)
        return counts.sum() / (2 * counts)
    weights = np.ones(n_classes)
    present = counts > 0
    if balanced:
        weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def auc_of_outputs(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if np.ndim(p) == 2:  # (n, k) logits: macro one-vs-rest AUC of the softmax
        from zoomfeat.mil.feeding import softmax_rows
        from zoomfeat.mil.metrics import macro_ovr_auc

        return macro_ovr_auc(y, softmax_rows(p))
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


class Objective:
    """Interface: targets, loss, validation score, predictions (see the module docstring)."""

    n_out: int = 1
    #: the validation score's name in the training history
    score_name: str = "val_auc"

    def fit(self, targets: np.ndarray, train_idx: np.ndarray) -> None:
        """Learn what depends on the training fold (class weights, target scale)."""

    def tensor(self, targets: np.ndarray, device: torch.device) -> torch.Tensor:
        """Every bag's target as a tensor on ``device`` (index it with bag positions)."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean training loss of a batch of outputs and targets."""
        raise NotImplementedError

    def score(self, y: np.ndarray, out: np.ndarray) -> float:
        """Validation score (higher is better) of raw outputs ``out`` for targets ``y``."""
        raise NotImplementedError


def _weighted_bce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights[y.long()]
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="none")
    return (loss * w).sum() / w.sum()


class Classification(Objective):
    """Class-weighted ``sum_b w_{y_b} l_b / sum_b w_{y_b}`` (BCE on one logit, CE on k).

    Args:
        n_classes: k (2: binary, one logit).
        balanced: ``mil.class_balanced``.
    """

    score_name = "val_auc"

    def __init__(self, n_classes: int = 2, balanced: bool = True) -> None:
        self.n_classes, self.balanced = int(n_classes), balanced
        self.n_out = 1 if self.n_classes == 2 else self.n_classes
        self.weights: torch.Tensor | None = None

    def fit(self, targets: np.ndarray, train_idx: np.ndarray) -> None:
        self._w = class_weights(np.asarray(targets)[train_idx], self.balanced, self.n_classes)

    def tensor(self, targets: np.ndarray, device: torch.device) -> torch.Tensor:
        self.weights = torch.as_tensor(self._w, dtype=torch.float32, device=device)
        dtype = np.float32 if self.n_classes == 2 else np.int64
        return torch.as_tensor(np.asarray(targets, dtype=dtype), device=device)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert self.weights is not None
        if out.ndim < 2:
            return _weighted_bce(out, y, self.weights)
        w = self.weights[y.long()]
        loss = nn.functional.cross_entropy(out.float(), y.long(), reduction="none")
        return (loss * w).sum() / w.sum()

    def score(self, y: np.ndarray, out: np.ndarray) -> float:
        return auc_of_outputs(np.asarray(y, dtype=np.int64), out)


class Regression(Objective):
    """Standardised-target regression (MSE or Huber); see the module docstring.

    Args:
        loss: ``mse`` or ``huber``.
    """

    score_name = "val_r2"

    def __init__(self, loss: str = "mse") -> None:
        self.kind = loss
        self.mean, self.std = 0.0, 1.0

    def fit(self, targets: np.ndarray, train_idx: np.ndarray) -> None:
        y = np.asarray(targets, dtype=np.float64)[train_idx]
        self.mean = float(y.mean())
        self.std = float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0

    def tensor(self, targets: np.ndarray, device: torch.device) -> torch.Tensor:
        u = (np.asarray(targets, dtype=np.float64) - self.mean) / self.std
        return torch.as_tensor(u, dtype=torch.float32, device=device)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "huber":
            return nn.functional.huber_loss(out.float(), y, delta=1.0)
        return nn.functional.mse_loss(out.float(), y)

    def predict(self, out: np.ndarray) -> np.ndarray:
        """Outputs back on the target's scale: ``m + s f``."""
        return self.mean + self.std * np.asarray(out, dtype=np.float64)

    def score(self, y: np.ndarray, out: np.ndarray) -> float:
        from zoomfeat.mil.metrics import r2_score

        return r2_score(y, self.predict(out))


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Cox negative log partial likelihood (Breslow ties), mean over the events of the batch.

    ``L = -(1/E) sum_{i: e_i=1} [r_i - log sum_{j: t_j >= t_i} exp(r_j)]``; 0 without events.

    Args:
        risk: (B,) log-risks; time: (B,) follow-up times; event: (B,) 1 = event, 0 = censored.
    """
    risk = risk.float().reshape(-1)
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order], time[order], event[order]
    log_cum = torch.logcumsumexp(r, 0)  # log sum over j with t_j >= t_i (plus later ties, below)
    # Breslow: a tie's risk set holds every bag with the same time, so use the last index of the tie
    last = torch.searchsorted(-t, -t, right=True) - 1
    log_risk_set = log_cum[last]
    n_events = e.sum()
    if float(n_events) == 0:
        return risk.sum() * 0.0
    return -((r - log_risk_set) * e).sum() / n_events


class Survival(Objective):
    """Cox proportional hazards on the bags of a step; see the module docstring."""

    score_name = "val_c_index"

    def tensor(self, targets: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.as_tensor(np.asarray(targets, dtype=np.float32), device=device)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cox_loss(out, y[:, 0], y[:, 1])

    def score(self, y: np.ndarray, out: np.ndarray) -> float:
        from zoomfeat.mil.metrics import harrell_c

        y = np.asarray(y, dtype=np.float64)
        return harrell_c(y[:, 0], y[:, 1], out)


def make_objective(
    task_type: str, *, n_classes: int = 2, balanced: bool = True, loss: str = "mse"
) -> Objective:
    """The :class:`Objective` of ``task.type``."""
    if task_type == "regression":
        return Regression(loss)
    if task_type == "survival":
        return Survival()
    return Classification(n_classes, balanced)


def targets_of(bags: Any, task_type: str, extra: Sequence[Any] | None = None) -> np.ndarray:
    """A bag set's targets: its labels (classification), else ``extra`` (the cohort's target
    values, (n,) for regression or (n, 2) time/event for survival, aligned with the bags)."""
    if task_type == "classification" or extra is None:
        return np.asarray(bags.labels)
    return np.asarray(extra, dtype=np.float64)
