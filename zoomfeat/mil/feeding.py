"""Bags into the model and predictions out: feeding, padding, autocast, probabilities.

* :class:`BagFeeder` gives bag ``i`` as a float32 (N, D) tensor on the run's device; on CUDA the
  in-memory bags are cached on the GPU in their in-memory dtype (float16 by default) when they
  fit in ``gpu_cache_fraction`` of the free memory (widening to float32 is exact, so caching
  changes no number).
* :func:`pad_batch` stacks bags of different sizes into (B, N_max, D) with a (B, N_max) mask;
  padded rows are zeros the attention softmax masks out, so a batch gives each bag's single-bag
  logit up to float32 summation order.
* :func:`amp_precision`: ``amp`` runs the forward pass in bf16 autocast
  (:func:`zoomfeat.runtime.device.autocast`) on CUDA and on CPUs with native bf16
  (AVX512-BF16/AMX; about 3x faster there), never on other CPUs (emulated bf16 is slower).
* :func:`predict` turns bag logits into probabilities: binary ``p = 1 / (1 + e^-z)`` (P(class 1)),
  k > 2 the row softmax ``p_c = e^{z_c - max z} / sum_j e^{z_j - max z}`` (shifted by the max so
  no exponent overflows), with each bag's raw attention logits (N,) for the attention files.

Used by the training loop (:mod:`zoomfeat.mil.train`: validation), the benchmark's test folds and
the nested selection's validation scores. See ``docs/ARCHITECTURE.md`` (MIL benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from zoomfeat.mil.bagset import BagSet
from zoomfeat.runtime.device import autocast, cpu_has_native_bf16


class BagFeeder:
    """Bags as float32 tensors on ``device``; on CUDA in-memory bags are cached on the GPU.

    Args:
        bags: the feature set.
        device: where the tensors go.
        gpu_cache_fraction: cache the (float16) bags on the GPU when their bytes are below this
            fraction of its free memory.
    """

    def __init__(self, bags: BagSet, device: torch.device, gpu_cache_fraction: float = 0.5) -> None:
        self.bags = bags
        self.device = device
        self._gpu: dict[int, torch.Tensor] | None = None
        if device.type == "cuda" and bags.in_memory:
            free, _ = torch.cuda.mem_get_info(device)
            if bags.nbytes < gpu_cache_fraction * free:
                self._gpu = {}

    def get(self, i: int) -> torch.Tensor:
        """Bag ``i`` (a position in the bag set) as a float32 (N, D) tensor on the device."""
        i = int(i)
        if self._gpu is not None:
            if i not in self._gpu:
                self._gpu[i] = torch.from_numpy(self.bags.bags[i]).to(self.device)
            return self._gpu[i].float()
        x = torch.from_numpy(np.asarray(self.bags.features(i)))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.float()


def pad_batch(xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack bags of different sizes for one forward pass.

    Args:
        xs: B bags, each (N_b, D).

    Returns:
        ``(X, mask)``: one bag gives (1, N, D) and None (no padding); several give X
        (B, N_max, D) zero-padded and mask (B, N_max), 1 on real instances, 0 on padding.
    """
    if len(xs) == 1:
        return xs[0].unsqueeze(0), None
    n = max(x.shape[0] for x in xs)
    X = xs[0].new_zeros((len(xs), n, xs[0].shape[1]))
    mask = torch.zeros((len(xs), n), device=xs[0].device)
    for k, x in enumerate(xs):
        X[k, : x.shape[0]] = x
        mask[k, : x.shape[0]] = 1
    return X, mask


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (max-shifted) of (n, k) logits; returns (n, k) float64 probabilities."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def amp_precision(device: torch.device, amp: bool) -> str:
    """``bf16`` autocast on CUDA and on CPUs with native bf16; ``fp32`` elsewhere (bf16 would be slower).

    Args:
        device: the run's device.
        amp: ``mil.amp``.

    Returns:
        ``"bf16"`` or ``"fp32"``, for :func:`zoomfeat.runtime.device.autocast`.
    """
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return "bf16" if amp and native else "fp32"


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    feeder: BagFeeder,
    idx: Sequence[int],
    attention: bool = False,
    amp: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Bag logits for bags ``idx``, one bag per forward pass, model in eval mode.

    Args:
        model: an :func:`~zoomfeat.mil.abmil.build_model` network.
        feeder: the bags.
        idx: positions of the bags to predict.
        attention: also return each bag's attention logits.
        amp: bf16 autocast where native (:func:`amp_precision`).

    Returns:
        ``(logits, atts)``: logits (n,) binary or (n, k) float64; atts a list of (N_b,) float32
        raw attention logits (empty unless ``attention``).
    """
    model.eval()
    device = feeder.device
    logits, atts = [], []
    for i in idx:
        X = feeder.get(i).unsqueeze(0)
        with autocast(device, amp_precision(device, amp)):
            logit, att = model(X, return_att=True)
        logits.append(logit.float().item() if logit.numel() == 1 else logit.float().reshape(-1).cpu().numpy())
        if attention:
            atts.append(att.float().squeeze(0).cpu().numpy())
    return np.asarray(logits, dtype=np.float64), atts


def predict(
    model: nn.Module, feeder: BagFeeder, idx: Sequence[int], attention: bool = False, amp: bool = False
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Class probabilities for bags ``idx`` (arguments as :func:`predict_logits`).

    Returns:
        ``(probs, atts)``: probs (n,) P(class 1) for a binary model, (n, k) class probabilities
        for k > 2; atts the raw attention logits per bag, (N_b,) each (when ``attention``).
    """
    logits, atts = predict_logits(model, feeder, idx, attention, amp)
    if logits.ndim == 2:
        return softmax_rows(logits), atts
    return 1.0 / (1.0 + np.exp(-logits)), atts
