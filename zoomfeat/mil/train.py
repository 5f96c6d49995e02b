"""Attention-MIL training for one cross-validation fold (torchmil ``ABMIL``).

The model is torchmil's :class:`~torchmil.models.ABMIL` (Ilse et al. 2018), gated attention
by ``gated=True``, with a feature extractor in front of the attention pooling: instance
standardisation with the *training fold's* statistics (a fixed buffer layer, so the saved
model carries them), then ``hidden`` Linear-ReLU-Dropout layers.

Training (:class:`FoldTrainer`): AdamW, class-balanced binary cross-entropy

    L = sum_b w_{y_b} BCE(z_b, y_b) / sum_b w_{y_b},    w_c = n / (2 n_c)

over the bags ``b`` of a step (``n`` training bags, ``n_c`` of class ``c``: each class weighs half
of the loss whatever the imbalance). With k > 2 classes the head is a softmax over k logits and
the loss the same weighted mean of cross-entropies with ``w_c = n / (k n_c)`` (each class 1/k).
Bags are shuffled each epoch, early stopping on validation AUC (macro one-vs-rest for k > 2)
(ties broken by the validation loss; the best epoch's weights are kept). Deterministic for a
given seed on a given machine. ``amp`` runs the forward pass in bf16 autocast
(:func:`zoomfeat.runtime.device.autocast`) on CUDA and on CPUs with native bf16
(AVX512-BF16/AMX; about 3x faster there), never on other CPUs. On CUDA the bags are cached on
the GPU as float16 when they fit. See ``docs/ARCHITECTURE.md`` (MIL benchmark).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from zoomfeat.mil.bagset import BagSet
from zoomfeat.mil.config import MILConfig
from zoomfeat.runtime.device import autocast, cpu_has_native_bf16, resolve_device
from zoomfeat.runtime.errors import InputError
from zoomfeat.runtime.seeding import seed_everything


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed buffers (the training fold's instance statistics)."""

    def __init__(self, dim: int, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.zeros(dim) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        )
        self.register_buffer(
            "std", torch.ones(dim) if std is None else torch.as_tensor(std, dtype=torch.float32)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(
    in_dim: int,
    cfg: MILConfig,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    n_classes: int = 2,
) -> nn.Module:
    """torchmil ABMIL with the standardise + MLP feature extractor described above.

    Binary (``n_classes=2``): torchmil's one-logit head (sigmoid). ``n_classes > 2``: the head is
    a ``Linear(width, n_classes)`` (softmax over the classes; ABMIL's forward then returns
    ``(batch, n_classes)`` logits) trained with cross-entropy.
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


def instance_stats(bags: BagSet, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over every instance of the bags ``idx`` (float64 sums)."""
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


class BagFeeder:
    """Bags as float32 tensors on ``device``; on CUDA in-memory bags are cached on the GPU."""

    def __init__(self, bags: BagSet, device: torch.device, gpu_cache_fraction: float = 0.5) -> None:
        self.bags = bags
        self.device = device
        self._gpu: dict[int, torch.Tensor] | None = None
        if device.type == "cuda" and bags.in_memory:
            free, _ = torch.cuda.mem_get_info(device)
            if bags.nbytes < gpu_cache_fraction * free:
                self._gpu = {}

    def get(self, i: int) -> torch.Tensor:
        i = int(i)
        if self._gpu is not None:
            if i not in self._gpu:
                self._gpu[i] = torch.from_numpy(self.bags.bags[i]).to(self.device)
            return self._gpu[i].float()
        x = torch.from_numpy(np.asarray(self.bags.features(i)))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.float()


def _batch(xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if len(xs) == 1:
        return xs[0].unsqueeze(0), None
    n = max(x.shape[0] for x in xs)
    X = xs[0].new_zeros((len(xs), n, xs[0].shape[1]))
    mask = torch.zeros((len(xs), n), device=xs[0].device)
    for k, x in enumerate(xs):
        X[k, : x.shape[0]] = x
        mask[k, : x.shape[0]] = 1
    return X, mask


def class_weights(labels: np.ndarray, balanced: bool = True, n_classes: int = 2) -> np.ndarray:
    """Per-class loss weights: ``n / (k n_c)`` (each of the k classes contributes 1/k), or ones.

    Binary: ones when a class is absent. ``n_classes > 2``: the k present classes share the loss
    equally; an absent class keeps weight 1 (no bag uses it).
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


def _weighted_bce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights[y.long()]
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="none")
    return (loss * w).sum() / w.sum()


def _weighted_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted loss: BCE on (B,) logits (binary), cross-entropy on (B, k) logits."""
    if logits.ndim < 2:
        return _weighted_bce(logits, y, weights)
    w = weights[y.long()]
    loss = nn.functional.cross_entropy(logits.float(), y.long(), reduction="none")
    return (loss * w).sum() / w.sum()


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) logits (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def amp_precision(device: torch.device, amp: bool) -> str:
    """``bf16`` autocast on CUDA and on CPUs with native bf16; ``fp32`` elsewhere (bf16 would be slower)."""
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
    """Bag logits for bags ``idx`` (and each bag's raw attention logits per instance)."""
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
    """Positive-class probabilities (binary: (n,)) or class probabilities (k > 2: (n, k)) for bags
    ``idx``, and raw attention logits per instance."""
    logits, atts = predict_logits(model, feeder, idx, attention, amp)
    if logits.ndim == 2:
        return softmax_rows(logits), atts
    return 1.0 / (1.0 + np.exp(-logits)), atts


@dataclass
class FoldResult:
    """A trained fold: the best model, its epoch, and the per-epoch history."""

    model: nn.Module
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if np.ndim(p) == 2:  # (n, k) logits: macro one-vs-rest AUC of the softmax
        from zoomfeat.mil.metrics import macro_ovr_auc

        return macro_ovr_auc(y, softmax_rows(p))
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


class FoldTrainer:
    """Trains one ABMIL on one cross-validation fold, in four steps (see :meth:`run`).

    1. set up: seed every RNG with the fold's seed, compute the training fold's instance
       statistics, build the model, the AdamW optimiser and the class weights;
    2. train one epoch: bags shuffled by the fold's NumPy generator, ``batch_size`` bags per
       step (padded and masked when > 1), at most ``max_instances`` random instances per bag;
    3. validate: loss and AUC on the validation bags; the best epoch (highest AUC, ties: lower
       loss, never before ``warmup``) is kept, and training stops ``patience`` epochs after it
       (never before ``min_epochs``);
    4. keep the best epoch's weights (the last epoch's without validation bags).

    Every random draw comes from ``seed`` in this order, so a fold is reproducible on one machine.
    """

    def __init__(
        self,
        bags: BagSet,
        train_idx: Sequence[int],
        val_idx: Sequence[int],
        cfg: MILConfig,
        seed: int = 0,
        device: str | torch.device = "auto",
        progress: bool = True,
        desc: str = "train",
        n_classes: int = 2,
    ) -> None:
        self.bags, self.cfg, self.seed = bags, cfg, seed
        self.n_classes = int(n_classes)
        self.device = resolve_device(device)
        self.precision = amp_precision(self.device, cfg.amp)
        self.train_idx = np.asarray(train_idx, dtype=np.int64)
        self.val_idx = np.asarray(val_idx, dtype=np.int64)
        if len(self.train_idx) == 0:
            raise InputError("no training bags in this fold")
        self.progress, self.desc = progress, desc
        self.history: list[dict[str, float]] = []
        self.best_key = (-math.inf, -math.inf)
        self.best_epoch, self.best_state = -1, None

    def run(self) -> FoldResult:
        """Steps 1-4; returns the trained fold."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        self.set_up()
        bar = tqdm(
            range(self.cfg.epochs), desc=self.desc, unit="epoch", leave=False, disable=not self.progress
        )
        for epoch in bar:
            epoch_start = time.perf_counter()
            record = {"epoch": epoch, "train_loss": self.train_epoch()}
            stop = False
            if len(self.val_idx):
                record.update(self.validate(epoch))
                bar.set_postfix(val_auc=f"{record['val_auc']:.3f}", best=self.best_epoch)
                stop = self.should_stop(epoch)
            record["seconds"] = time.perf_counter() - epoch_start
            self.history.append(record)
            if stop:
                break
        bar.close()
        self.keep_best()
        return FoldResult(
            model=self.model,
            best_epoch=int(self.best_epoch),
            history=self.history,
            seconds=time.perf_counter() - start,
        )

    def set_up(self) -> None:
        """Step 1: seeds, training-fold statistics, model, optimiser, class weights."""
        cfg, bags, device = self.cfg, self.bags, self.device
        seed_everything(self.seed)
        self.rng = np.random.default_rng(self.seed)
        mean = std = None
        if cfg.standardize:
            mean, std = instance_stats(bags, self.train_idx)
        self.model = build_model(bags.dim, cfg, mean, std, self.n_classes).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.feeder = BagFeeder(bags, device)
        self.weights = torch.as_tensor(
            class_weights(bags.labels[self.train_idx], cfg.class_balanced, self.n_classes),
            dtype=torch.float32,
            device=device,
        )
        label_dtype = np.float32 if self.n_classes == 2 else np.int64
        self.labels = torch.as_tensor(np.array(bags.labels, dtype=label_dtype), device=device)

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
        total, seen = 0.0, 0
        for b in range(0, len(order), self.cfg.batch_size):
            chunk = order[b : b + self.cfg.batch_size]
            X, mask = _batch([self._instances(i) for i in chunk])
            y = self.labels[torch.from_numpy(chunk).to(self.device)]
            with autocast(self.device, self.precision):
                logits = self.model(X, mask)
            loss = _weighted_loss(logits, y, self.weights)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.item() * len(chunk)
            seen += len(chunk)
        return total / seen

    def validate(self, epoch: int) -> dict[str, float]:
        """Step 3: validation loss and AUC; remembers the best epoch's weights."""
        logit, _ = predict_logits(self.model, self.feeder, self.val_idx, amp=self.cfg.amp)
        yv = self.bags.labels[self.val_idx]
        val_loss = float(
            _weighted_loss(
                torch.as_tensor(logit, device=self.device),
                torch.as_tensor(yv, device=self.device),
                self.weights,
            )
        )
        val_auc = _auc(yv, logit)
        key = (val_auc if not math.isnan(val_auc) else -math.inf, -val_loss)
        if epoch >= self.cfg.warmup and key > self.best_key:
            self.best_key, self.best_epoch = key, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        return {"val_loss": val_loss, "val_auc": val_auc}

    def should_stop(self, epoch: int) -> bool:
        """Early stopping: ``patience`` epochs without a better one (after warmup and min_epochs)."""
        cfg = self.cfg
        return epoch - max(self.best_epoch, cfg.warmup - 1) >= cfg.patience and epoch + 1 >= cfg.min_epochs

    def keep_best(self) -> None:
        """Step 4: load the best epoch's weights (without validation: keep the last epoch)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        else:
            self.best_epoch = self.history[-1]["epoch"]
        self.model.eval()


def train_fold(
    bags: BagSet,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    cfg: MILConfig,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    desc: str = "train",
    n_classes: int = 2,
) -> FoldResult:
    """Train one ABMIL on ``train_idx`` with early stopping on ``val_idx`` (positions in ``bags``).

    Args:
        bags: the feature set; ``train_idx``/``val_idx`` index its bags.
        cfg: model and optimisation settings.
        seed: the fold's seed (the same for every feature set: paired comparison).
        n_classes: 2 (binary, one logit) or k > 2 (softmax head, class-balanced cross-entropy).
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.

    Returns:
        The best epoch's model (eval mode), its epoch, the per-epoch history and the seconds.
        Without validation bags it trains for ``cfg.epochs`` and keeps the last epoch.
    """
    return FoldTrainer(bags, train_idx, val_idx, cfg, seed, device, progress, desc, n_classes).run()
