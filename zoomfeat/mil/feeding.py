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

#: float32 bytes of a fold's training and validation bags that :meth:`BagFeeder.preload` holds ready
PRELOAD_MAX_BYTES = 2**30


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
        self._ready: dict[int, torch.Tensor] = {}
        self._ready_bytes = 0
        if device.type == "cuda" and bags.in_memory:
            free, _ = torch.cuda.mem_get_info(device)
            if bags.nbytes < gpu_cache_fraction * free:
                self._gpu = {}

    def preload(self, idx: Sequence[int] | np.ndarray, max_bytes: float = PRELOAD_MAX_BYTES) -> None:
        """Hold bags ``idx`` as ready float32 tensors on the device (one conversion per fold instead
        of one per step) when they are in memory and their float32 bytes stay under ``max_bytes``."""
        held = self.bags.bags
        if not self.bags.in_memory or held is None:
            return
        idx = [int(i) for i in idx if int(i) not in self._ready]
        need = sum(4 * int(self.bags.n_instances[i]) * self.bags.dim for i in idx)
        if need + self._ready_bytes > max_bytes:
            return
        for i in idx:
            self._ready[i] = torch.from_numpy(np.asarray(held[i])).to(self.device).float()
        self._ready_bytes += need

    def get(self, i: int) -> torch.Tensor:
        """Bag ``i`` (a position in the bag set) as a float32 (N, D) tensor on the device."""
        i = int(i)
        ready = self._ready.get(i)
        if ready is not None:
            return ready
        if self._gpu is not None:
            if i not in self._gpu:
                self._gpu[i] = torch.from_numpy(self.bags.bags[i]).to(self.device)  # type: ignore[index]
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
        ``(X, mask)``: one bag, or several of one size, give (B, N, D) and None (no padding);
        several sizes give X (B, N_max, D) zero-padded and mask (B, N_max), 1 on real instances,
        0 on padding.
    """
    if len(xs) == 1:
        return xs[0].unsqueeze(0), None
    n = max(x.shape[0] for x in xs)
    if all(x.shape[0] == n for x in xs):  # one size: stacked, nothing to mask
        return torch.stack(xs), None
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


def eval_batches(
    sizes: Sequence[int], max_rows: int = 1 << 16, same_size_only: bool = False
) -> list[list[int]]:
    """Group bag positions ``0..n-1`` into forward passes for evaluation: consecutive bags while the
    padded batch ``B * N_max`` stays within ``max_rows`` instance rows (a bag larger than that runs
    alone); ``same_size_only``: a batch holds bags of one size (models without a padding mask)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    n_max = 0
    for k, n in enumerate(sizes):
        n = int(n)
        fits = cur and (len(cur) + 1) * max(n_max, n) <= max_rows and (not same_size_only or n == n_max)
        if cur and not fits:
            groups.append(cur)
            cur, n_max = [], 0
        cur.append(k)
        n_max = max(n_max, n)
    if cur:
        groups.append(cur)
    return groups


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    feeder: BagFeeder,
    idx: Sequence[int] | np.ndarray,
    *,
    attention: bool = False,
    amp: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Raw outputs (logits, regression values, log-risks) for bags ``idx``, model in eval mode.

    Bags are evaluated in batches (:func:`eval_batches`; padded and masked, so each bag's output
    equals its single-bag output up to float32 summation order); instance scores run one bag at
    a time.

    Args:
        model: a :class:`~zoomfeat.mil.aggregators.MILNet` (or an
            :func:`~zoomfeat.mil.abmil.build_model` network).
        feeder: the bags.
        idx: positions of the bags to predict.
        attention: also return each bag's instance scores (attention logits, or gradient x input
            for aggregators without attention: :meth:`~zoomfeat.mil.aggregators.MILNet.instance_scores`).
        amp: bf16 autocast where native (:func:`amp_precision`).

    Returns:
        ``(outputs, scores)``: outputs (n,) for one output or (n, k) float64; scores a list of
        (N_b,) float32 arrays (empty unless ``attention``).
    """
    model.eval()
    device = feeder.device
    precision = amp_precision(device, amp)
    idx = [int(i) for i in idx]
    sizes = [int(feeder.bags.n_instances[i]) for i in idx]
    same_only = not getattr(model, "supports_mask", True)
    outs: list[torch.Tensor] = []
    for group in eval_batches(sizes, same_size_only=same_only):
        X, mask = pad_batch([feeder.get(idx[k]) for k in group])
        with autocast(device, precision):
            out = model(X, mask)
        outs.append(out.float().reshape(len(group), -1))
    logits = torch.cat(outs).cpu().numpy().astype(np.float64) if outs else np.zeros((0, 1))
    logits = logits[:, 0] if logits.shape[1] == 1 else logits
    atts: list[np.ndarray] = []
    if attention:
        for i in idx:
            X = feeder.get(i).unsqueeze(0)
            with autocast(device, precision):
                scores = getattr(model, "instance_scores", None)
                if callable(scores):
                    att = scores(X)
                else:
                    att = model(X, return_att=True)[1]
            atts.append(att.float().squeeze(0).cpu().numpy())
    return logits, atts


def predict(
    model: nn.Module,
    feeder: BagFeeder,
    idx: Sequence[int] | np.ndarray,
    *,
    attention: bool = False,
    amp: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Class probabilities for bags ``idx`` (arguments as :func:`predict_logits`).

    Returns:
        ``(probs, atts)``: probs (n,) P(class 1) for a binary model, (n, k) class probabilities
        for k > 2; atts the raw attention logits per bag, (N_b,) each (when ``attention``).
    """
    logits, atts = predict_logits(model, feeder, idx, attention=attention, amp=amp)
    if logits.ndim == 2:
        return softmax_rows(logits), atts
    return 1.0 / (1.0 + np.exp(-logits)), atts
