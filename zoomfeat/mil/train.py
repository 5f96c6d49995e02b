"""Attention-MIL training for one cross-validation fold (torchmil ``ABMIL``).

The model is torchmil's :class:`~torchmil.models.ABMIL` (Ilse et al. 2018), gated attention
by ``gated=True``, with a feature extractor in front of the attention pooling: instance
standardisation with the *training fold's* statistics (a fixed buffer layer, so the saved
model carries them), then ``hidden`` Linear-ReLU-Dropout layers.

Training: AdamW, class-balanced binary cross-entropy (each class weighs half of the loss),
bags shuffled each epoch, early stopping on validation AUC (ties broken by the validation
loss; the best epoch's weights are kept). Deterministic for a given seed on a given
machine. ``amp`` runs the forward pass in bf16 autocast on CUDA and on CPUs with native bf16
(AVX512-BF16/AMX; about 3x faster there), never on other CPUs. On CUDA the bags are cached on
the GPU as float16 when they fit.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from zoomfeat.mil.data import BagSet


@dataclass
class MILConfig:
    """Model and optimisation settings (``conf/mil/*.yaml``)."""

    name: str = "abmil"
    gated: bool = False
    att_dim: int = 128
    att_act: str = "tanh"
    hidden: tuple[int, ...] = (512,)
    dropout: float = 0.25
    standardize: bool = True
    lr: float = 2e-4
    weight_decay: float = 1e-4
    epochs: int = 50
    patience: int = 10
    min_epochs: int = 10
    warmup: int = 0
    batch_size: int = 1
    class_balanced: bool = True
    max_instances: int | None = None
    amp: bool = True

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MILConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown mil option(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        if "hidden" in values:
            values["hidden"] = tuple(int(h) for h in (values["hidden"] or ()))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


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
    in_dim: int, cfg: MILConfig, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> nn.Module:
    """torchmil ABMIL with the standardise + MLP feature extractor described above."""
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
    return ABMIL(
        in_shape=(in_dim,),
        att_dim=cfg.att_dim,
        att_act=cfg.att_act,
        gated=cfg.gated,
        feat_ext=feat_ext,
        criterion=nn.BCEWithLogitsLoss(),
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device=cuda was asked for but CUDA is not available; use device=cpu or device=auto"
        )
    return device


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def class_weights(labels: np.ndarray, balanced: bool = True) -> np.ndarray:
    """Per-class loss weights: ``n / (2 n_c)`` (each class contributes half), or ones."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2).astype(np.float64)
    if not balanced or (counts == 0).any():
        return np.ones(2)
    return counts.sum() / (2 * counts)


def _weighted_bce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights[y.long()]
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="none")
    return (loss * w).sum() / w.sum()


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 / AMX): autocast pays off there."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without oneDNN
        return False


def amp_enabled(device: torch.device, amp: bool) -> bool:
    """bf16 autocast on CUDA, and on CPUs with native bf16; never elsewhere (it would be slower)."""
    return bool(amp) and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()))


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp_enabled(device, enabled))


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
        with _autocast(device, amp):
            logit, att = model(X, return_att=True)
        logits.append(logit.float().item())
        if attention:
            atts.append(att.float().squeeze(0).cpu().numpy())
    return np.asarray(logits, dtype=np.float64), atts


def predict(
    model: nn.Module, feeder: BagFeeder, idx: Sequence[int], attention: bool = False, amp: bool = False
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Positive-class probabilities for bags ``idx`` (and raw attention logits per instance)."""
    logits, atts = predict_logits(model, feeder, idx, attention, amp)
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

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def train_fold(
    bags: BagSet,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    cfg: MILConfig,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    desc: str = "train",
) -> FoldResult:
    """Train one ABMIL on ``train_idx`` with early stopping on ``val_idx`` (positions in ``bags``).

    Without validation bags it trains for ``cfg.epochs`` and keeps the last epoch.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    device = resolve_device(device)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if len(train_idx) == 0:
        raise ValueError("no training bags in this fold")
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    mean = std = None
    if cfg.standardize:
        mean, std = instance_stats(bags, train_idx)
    model = build_model(bags.dim, cfg, mean, std).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    feeder = BagFeeder(bags, device)
    weights = torch.as_tensor(
        class_weights(bags.labels[train_idx], cfg.class_balanced), dtype=torch.float32, device=device
    )
    labels = torch.as_tensor(np.array(bags.labels, dtype=np.float32), device=device)

    best_key = (-math.inf, -math.inf)
    best_epoch, best_state = -1, None
    history: list[dict[str, float]] = []
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", leave=False, disable=not progress)
    for epoch in bar:
        epoch_start = time.perf_counter()
        model.train()
        order = train_idx[rng.permutation(len(train_idx))]
        total, seen = 0.0, 0
        for b in range(0, len(order), cfg.batch_size):
            chunk = order[b : b + cfg.batch_size]
            xs = []
            for i in chunk:
                x = feeder.get(i)
                if cfg.max_instances and x.shape[0] > cfg.max_instances:
                    keep = torch.from_numpy(
                        np.sort(rng.choice(x.shape[0], cfg.max_instances, replace=False))
                    ).to(x.device)
                    x = x.index_select(0, keep)
                xs.append(x)
            X, mask = _batch(xs)
            y = labels[torch.from_numpy(chunk).to(device)]
            with _autocast(device, cfg.amp):
                logits = model(X, mask)
            loss = _weighted_bce(logits, y, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(chunk)
            seen += len(chunk)
        record = {"epoch": epoch, "train_loss": total / seen}
        if len(val_idx):
            logit, _ = predict_logits(model, feeder, val_idx, amp=cfg.amp)
            yv = bags.labels[val_idx]
            val_loss = float(
                _weighted_bce(
                    torch.as_tensor(logit, device=device), torch.as_tensor(yv, device=device), weights
                )
            )
            val_auc = _auc(yv, logit)
            record.update(val_loss=val_loss, val_auc=val_auc)
            record["seconds"] = time.perf_counter() - epoch_start
            key = (val_auc if not math.isnan(val_auc) else -math.inf, -val_loss)
            if epoch >= cfg.warmup and key > best_key:
                best_key, best_epoch = key, epoch
                best_state = copy.deepcopy(model.state_dict())
            bar.set_postfix(val_auc=f"{val_auc:.3f}", best=best_epoch)
            history.append(record)
            if epoch - max(best_epoch, cfg.warmup - 1) >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                break
        else:
            record["seconds"] = time.perf_counter() - epoch_start
            history.append(record)
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = history[-1]["epoch"]
    model.eval()
    return FoldResult(
        model=model, best_epoch=int(best_epoch), history=history, seconds=time.perf_counter() - start
    )
