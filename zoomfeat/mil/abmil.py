"""The MIL network: torchmil ``ABMIL`` behind a standardise + MLP feature extractor.

The model is torchmil's :class:`~torchmil.models.ABMIL` (Ilse et al. 2018): per bag of N
instances ``x_1..x_N`` (each D features) the feature extractor gives ``h_i``, attention pools them

    a_i = w^T act(V h_i + b)          (gated: w^T (act(V h_i + b) * sigmoid(U h_i + b')))
    z   = sum_i softmax(a)_i h_i,     logit = c(z)

(``act`` = ``att_act``, tanh by default; padded instances are masked out of the softmax)

with ``c`` one logit (binary, sigmoid) or ``Linear(width, k)`` (k > 2 classes, softmax). The
feature extractor is instance standardisation ``(x - mean) / std`` with the *training fold's*
statistics (:func:`instance_stats`; a fixed buffer layer, :class:`Standardize`, so the saved
model carries them and test bags are never seen when they are computed), then ``hidden``
Linear-ReLU-Dropout layers. Training is :mod:`zoomfeat.mil.train`; prediction
:mod:`zoomfeat.mil.feeding`. See ``docs/ARCHITECTURE.md`` (MIL benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from zoomfeat.mil.bagset import BagSet
from zoomfeat.mil.config import MILConfig


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed buffers (the training fold's instance statistics).

    Args:
        dim: D, the feature width.
        mean, std: (D,) statistics; None gives zeros / ones (the identity).
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, dim: int, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.zeros(dim) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        )
        self.register_buffer(
            "std", torch.ones(dim) if std is None else torch.as_tensor(std, dtype=torch.float32)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D) standardised."""
        return (x - self.mean) / self.std


def build_model(
    in_dim: int,
    cfg: MILConfig,
    *,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    n_classes: int = 2,
) -> nn.Module:
    """torchmil ABMIL with the standardise + MLP feature extractor described above.

    Binary (``n_classes=2``): torchmil's one-logit head (sigmoid). ``n_classes > 2``: the head is
    a ``Linear(width, n_classes)`` (softmax over the classes; ABMIL's forward then returns
    ``(batch, n_classes)`` logits) trained with cross-entropy.

    Args:
        in_dim: D, the instance feature width.
        cfg: the network settings (``standardize``, ``hidden``, ``dropout``, ``att_dim``,
            ``att_act``, ``gated``).
        mean, std: (D,) training-fold instance statistics for :class:`Standardize` (None: identity).
        n_classes: 2 (one logit) or k > 2 (k logits).

    Returns:
        The model: ``model(X (B, N, D), mask (B, N) | None)`` -> logits (B,) binary or (B, k);
        with ``return_att=True`` also the attention logits (B, N).
    """
    from torchmil.models import ABMIL

    layers: list[nn.Module] = []
    if cfg.standardize:
        layers.append(
            Standardize(
                in_dim,
                None if mean is None else torch.from_numpy(mean),
                None if std is None else torch.from_numpy(std),
            )
        )
    width = in_dim
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
        width = h
    feat_ext = nn.Sequential(*layers) if layers else nn.Identity()
    model = ABMIL(
        in_shape=(in_dim,),
        att_dim=cfg.att_dim,
        att_act=cfg.att_act,
        gated=cfg.gated,
        feat_ext=feat_ext,
        criterion=nn.BCEWithLogitsLoss(),
    )
    if n_classes > 2:
        model.classifier = nn.Linear(width, n_classes)
        model.criterion = nn.CrossEntropyLoss()
    return model


def instance_stats(bags: BagSet, idx: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over every instance of the bags ``idx``.

    Sums of x and x^2 are taken in float64 (so a fold of millions of float16 instances loses
    nothing to accumulation), ``var = E[x^2] - E[x]^2`` clamped at 0; a feature with std < 1e-6
    (constant on the fold) keeps std 1: centred, unscaled.

    Args:
        bags: the feature set.
        idx: positions of the training bags in ``bags``.

    Returns:
        ``(mean, std)``, each (D,) float32.
    """
    total = torch.zeros(bags.dim, dtype=torch.float64)
    total_sq = torch.zeros(bags.dim, dtype=torch.float64)
    count = 0
    for i in idx:
        x = torch.from_numpy(np.asarray(bags.features(int(i)))).to(torch.float64)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += x.shape[0]
    mean = total / max(count, 1)
    var = (total_sq / max(count, 1) - mean * mean).clamp_min(0)
    std = var.sqrt()
    std[std < 1e-6] = 1.0  # constant features: leave them centred, unscaled
    return mean.float().numpy(), std.float().numpy()
