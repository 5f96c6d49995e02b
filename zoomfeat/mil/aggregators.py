"""The MIL aggregators (``mil=``): one network interface over torchmil's models and two pooling baselines.

Every aggregator is a :class:`MILNet`: instance standardisation ``z = (x - mean) / std`` with the
training fold's statistics (:class:`~zoomfeat.mil.abmil.Standardize`), an optional
Linear-ReLU-Dropout feature extractor ``h_i = g(z_i)`` (``mil.hidden``), a pooling of the N
instances into one bag vector, and a head with ``n_out`` outputs (one logit for a binary task,
k logits for k classes, one value for regression, one log-risk for survival):

* ``abmil`` / ``gated_abmil`` -- torchmil ``ABMIL`` (Ilse et al. 2018):
  ``a_i = w^T tanh(V h_i)`` (gated: ``w^T (tanh(V h_i) * sigmoid(U h_i))``),
  ``y = c(sum_i softmax(a)_i h_i)``;
* ``clam_sb`` -- torchmil ``CLAM_SB`` (Lu et al. 2021): gated attention pooling as ABMIL plus the
  instance clustering loss on the ``k_sample`` most and least attended instances; the training loss
  is ``(1 - inst_weight) L_bag + inst_weight L_inst`` (binary classification only: the clusters are
  "positive" and "negative" instances);
* ``transmil`` -- torchmil ``TransMIL`` (Shao et al. 2021): the instances, padded to a square,
  go through two Nystrom self-attention layers with the PPEG position encoding between them; the
  class token gives ``y`` (no padding mask: padded batches run one bag at a time). The Nystrom
  layers use ``m = min(m0, T)`` landmarks for ``T = ceil(sqrt(N))^2 + 1`` tokens (``m0 = att_dim / 2``,
  the paper's 256): with ``T >= m0`` this is torchmil's layer unchanged; a shorter sequence is not
  zero-padded up to ``m0`` tokens but uses every token as a landmark, where Nystrom's
  ``softmax(Q L_K^T) pinv(softmax(L_Q L_K^T)) softmax(L_Q K^T) V`` equals softmax attention
  ``softmax(Q K^T) V`` (``A pinv(A) A = A``) up to the iterative pseudo-inverse. (Padding took the
  zero tokens into the softmax as keys of score 0 and cost 8 heads x 2 layers of 256 x 256
  pseudo-inverse iterations per bag: 0.63 CPU-s per training step of a 5-instance MUSK bag.)
* ``dsmil`` -- torchmil ``DSMIL`` (Li et al. 2021): instance scores ``s_i = w^T h_i``, the critical
  instance ``m = argmax s``, attention ``A_i = softmax_i(q_i . q_m / sqrt(d))``, bag score
  ``b = c(sum_i A_i h_i)``; trained on ``(L(b) + L(s_m)) / 2``, predicts ``(b + s_m) / 2``
  (one output only: binary, regression, survival);
* ``meanpool`` -- ``y = MLP(mean_i h_i)`` (padded instances excluded from the mean);
* ``maxpool`` -- ``y = Linear(max_i h_i)`` (elementwise max over the real instances).

Instance scores for heatmaps (:meth:`MILNet.instance_scores`): the attention logits ``a_i`` for
ABMIL and CLAM, ``log A_i`` for DSMIL (so a softmax over the bag gives back ``A``); for TransMIL,
meanpool and maxpool, which have no per-instance weight, gradient x input on the standardised
instances,

    s_i = sum_d z_{i,d} * d y / d z_{i,d}

(for k classes ``y`` is the logit of the predicted class). It is the first-order Taylor term of
instance i's contribution relative to the training fold's mean instance (``z = 0``): for meanpool
with a linear head it is exactly that contribution; positive scores push the output up.

Which aggregator fits which task: :func:`check_support` (one line, before any training).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from zoomfeat.mil.abmil import Standardize
from zoomfeat.mil.config import SUPPORT, MILConfig, check_support, task_kind
from zoomfeat.runtime.errors import ConfigError

__all__ = ["ARCHS", "SCORE_KIND", "SUPPORT", "MILNet", "build_net", "check_support", "task_kind"]

#: every aggregator, by ``mil.arch``
ARCHS = ("abmil", "clam_sb", "transmil", "dsmil", "meanpool", "maxpool")
#: how each aggregator scores instances for heatmaps
SCORE_KIND = {
    "abmil": "attention",
    "clam_sb": "attention",
    "dsmil": "attention",
    "transmil": "gradient_x_input",
    "meanpool": "gradient_x_input",
    "maxpool": "gradient_x_input",
}


def _extractor(in_dim: int, cfg: MILConfig) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    width = in_dim
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
        width = h
    return (nn.Sequential(*layers) if layers else nn.Identity()), width


class _Pool(nn.Module):
    """meanpool / maxpool: feature extractor, masked mean or max over instances, head."""

    def __init__(
        self, feat_ext: nn.Module, *, width: int, n_out: int, mode: str, head_hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.feat_ext, self.mode = feat_ext, mode
        if head_hidden > 0:
            self.classifier: nn.Module = nn.Sequential(
                nn.Linear(width, head_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(head_hidden, n_out)
            )
        else:
            self.classifier = nn.Linear(width, n_out)

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.feat_ext(X)
        if self.mode == "mean":
            if mask is None:
                z = h.mean(1)
            else:
                m = mask.to(h.dtype).unsqueeze(-1)
                z = (h * m).sum(1) / m.sum(1).clamp_min(1)
        else:
            if mask is not None:
                h = h.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
            z = h.amax(1)
        return self.classifier(z)


def smooth_top1_svm(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, tau: float = 1.0
) -> torch.Tensor:
    """Smooth top-1 SVM loss (Berrada et al. 2018; CLAM's instance loss), mean over rows:
    ``tau * log sum_j exp((x_j + alpha [j != y] - x_y) / tau)`` of (n, c) logits and (n,) targets.
    (Written here: torchmil 1.0.2's ``SmoothTop1SVM`` broadcasts its (n, 1) targets into an
    (n, n, c) tensor and fails or mis-scores once a margin gets large.)"""
    x = logits.float()
    y = target.long().reshape(-1)
    margin = alpha * (torch.arange(x.shape[1], device=x.device)[None, :] != y[:, None]).float()
    z = (x + margin - x.gather(1, y[:, None])) / tau
    return (tau * torch.logsumexp(z, dim=1)).mean()


def clam_instance_loss(
    net: Any,
    att: torch.Tensor,
    *,
    emb: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    svm: bool,
) -> torch.Tensor:
    """CLAM's instance clustering loss, mean over the bags of a batch: for a bag of class ``Y`` the
    ``k`` most attended instances are class 1 and the ``k`` least attended class 0 for the instance
    classifier ``c_Y``, and the ``k`` most attended are class 0 for ``c_{1-Y}``
    (``k = min(k_sample, N)``); smooth top-1 SVM or cross-entropy on the instance logits."""
    total = att.new_zeros(())
    for b in range(att.shape[0]):
        a, h = att[b].float(), emb[b]
        if mask is not None:
            real = mask[b].bool()
            a, h = a[real], h[real]
        k = min(int(net.k_sample), a.shape[0])
        top, low = torch.topk(a, k).indices, torch.topk(-a, k).indices
        label = int(float(y[b]) > 0.5)
        inside, outside = net.inst_classifiers[label], net.inst_classifiers[1 - label]
        x_in = inside(torch.cat([h[top], h[low]]))
        t_in = torch.cat([torch.ones(k, device=a.device), torch.zeros(k, device=a.device)]).long()
        x_out = outside(h[top])
        t_out = torch.zeros(k, dtype=torch.long, device=a.device)
        if svm:
            total = total + smooth_top1_svm(x_in, t_in) + smooth_top1_svm(x_out, t_out)
        else:
            ce = nn.functional.cross_entropy
            total = total + ce(x_in.float(), t_in) + ce(x_out.float(), t_out)
    return total / att.shape[0]


def fit_landmarks(net: Any, n_instances: int) -> int:
    """Set TransMIL's Nystrom layers to ``m = min(m0, T)`` landmarks for a bag of ``n_instances``
    (``T = ceil(sqrt(N))^2 + 1`` tokens: the square padding plus the class token; ``m0`` =
    ``net.n_landmarks``, torchmil's ``att_dim // 2``); returns ``m``. See the module docstring."""
    side = math.isqrt(max(n_instances, 1) - 1) + 1  # ceil(sqrt(N))
    m = min(int(net.n_landmarks), side * side + 1)  # torchmil's TransMIL
    for layer in net.layers:
        layer.att_module.n_landmarks = m
    return m


class MILNet(nn.Module):
    """One aggregator behind one interface (see the module docstring).

    ``forward(X (B, N, D), mask (B, N) | None, return_att=False)`` -> outputs (B,) for one output,
    (B, k) for k; with ``return_att`` also the instance scores (B, N) (attention logits for the
    attention aggregators; zeros for the others, whose scores need gradients:
    :meth:`instance_scores`).

    Args:
        net: the pooling network (takes standardised instances).
        arch: ``mil.arch``.
        n_out: outputs of the head.
        standardize: the training fold's :class:`Standardize` (or the identity).
        cfg: the settings (``inst_weight`` for CLAM).
    """

    def __init__(
        self, net: nn.Module, *, arch: str, n_out: int, standardize: nn.Module, cfg: MILConfig
    ) -> None:
        super().__init__()
        self.net, self.arch, self.n_out = net, arch, int(n_out)
        self.standardize = standardize
        self.inst_weight = float(cfg.inst_weight)
        self.inst_svm = cfg.inst_loss == "SmoothTop1SVM"
        self.score_kind = SCORE_KIND[arch]

    @property
    def supports_mask(self) -> bool:
        """Whether a padded batch can run in one forward pass (TransMIL has no padding mask)."""
        return self.arch != "transmil"

    def _squeeze(self, y: torch.Tensor) -> torch.Tensor:
        y = y.reshape(y.shape[0], -1)
        return y[:, 0] if self.n_out == 1 else y

    def _net_forward(self, Z: torch.Tensor, mask: torch.Tensor | None, return_att: bool) -> Any:
        arch, net = self.arch, self.net
        if arch in ("abmil", "clam_sb"):
            if return_att:
                y, att = net(Z, mask, return_att=True)
                return self._squeeze(y), att
            return self._squeeze(net(Z, mask))
        if arch == "dsmil":
            y, A, inst = net(Z, mask, return_att=True, return_inst_pred=True)
            if mask is not None:
                inst = inst.masked_fill(~mask.bool(), float("-inf"))
            out = 0.5 * (y + inst.amax(1))  # torchmil DSMIL.predict
            if return_att:
                return out, torch.log(A.squeeze(-1).clamp_min(1e-30))
            return out
        if arch == "transmil":
            if mask is not None and not bool(mask.all()):
                outs = [
                    self._net_forward(Z[b : b + 1, : int(mask[b].sum())], None, False) for b in range(len(Z))
                ]
                out = torch.cat(outs)
            else:
                fit_landmarks(net, Z.shape[1])
                out = self._squeeze(net(Z))
        else:
            out = self._squeeze(net(Z, mask))
        if return_att:
            return out, Z.new_zeros(Z.shape[:2])
        return out

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None, return_att: bool = False) -> Any:
        """Outputs (and, with ``return_att``, attention logits) of a (B, N, D) batch."""
        return self._net_forward(self.standardize(X), mask, return_att)

    def training_loss(
        self, X: torch.Tensor, mask: torch.Tensor | None, y: torch.Tensor, loss_fn: Any
    ) -> torch.Tensor:
        """The training loss of one batch: ``loss_fn(outputs, y)`` plus the aggregator's own terms.

        CLAM: ``(1 - inst_weight) L_bag + inst_weight L_inst``; DSMIL: ``(L(b) + L(max_i s_i)) / 2``.
        """
        Z = self.standardize(X)
        if self.arch == "clam_sb":
            logits, att, emb = self.net(Z, mask, return_att=True, return_emb=True)
            inst = clam_instance_loss(self.net, att, emb=emb, y=y, mask=mask, svm=self.inst_svm)
            return (1 - self.inst_weight) * loss_fn(self._squeeze(logits), y) + self.inst_weight * inst
        if self.arch == "dsmil":
            b, inst = self.net(Z, mask, return_inst_pred=True)
            if mask is not None:
                inst = inst.masked_fill(~mask.bool(), float("-inf"))
            return 0.5 * (loss_fn(b, y) + loss_fn(inst.amax(1), y))
        return loss_fn(self._net_forward(Z, mask, False), y)

    def instance_scores(self, X: torch.Tensor) -> torch.Tensor:
        """(1, N) instance scores of one bag X (1, N, D): attention logits, or gradient x input
        ``s_i = sum_d z_{i,d} dy/dz_{i,d}`` on the standardised instances (module docstring)."""
        if self.score_kind == "attention":
            with torch.no_grad():
                return self.forward(X, None, return_att=True)[1].float()
        with torch.enable_grad():
            Z = self.standardize(X).detach().float().requires_grad_(True)
            out = self._net_forward(Z, None, False)
            if out.ndim == 2:
                out = out.gather(1, out.argmax(1, keepdim=True))
            (grad,) = torch.autograd.grad(out.sum(), Z)
        return (grad * Z).sum(-1).detach()


def build_net(
    in_dim: int,
    cfg: MILConfig,
    *,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    n_out: int = 1,
) -> MILNet:
    """The aggregator ``cfg.arch`` with ``n_out`` outputs, standardising with ``mean``/``std``.

    Args:
        in_dim: D, the instance feature width.
        cfg: ``conf/mil/NAME.yaml``'s settings.
        mean, std: (D,) training-fold statistics (None: identity; ``cfg.standardize=false``: none).
        n_out: 1 (binary logit, regression value, survival log-risk) or k class logits.

    Returns:
        The :class:`MILNet`.
    """
    from torchmil.models import ABMIL, CLAM_SB, DSMIL, TransMIL

    stand: nn.Module = nn.Identity()
    if cfg.standardize:
        stand = Standardize(
            in_dim,
            None if mean is None else torch.as_tensor(mean),
            None if std is None else torch.as_tensor(std),
        )
    feat_ext, width = _extractor(in_dim, cfg)
    arch = cfg.arch
    net: nn.Module
    # torchmil's models: constructor and its arguments beyond (in_shape, att_dim, feat_ext)
    torchmil_nets: dict[str, tuple[Any, dict[str, Any]]] = {
        "abmil": (ABMIL, {"att_act": cfg.att_act, "gated": cfg.gated}),
        "clam_sb": (
            CLAM_SB,
            {
                "att_act": cfg.att_act,
                "gated": cfg.gated,
                "k_sample": cfg.k_sample,
                "inst_loss_name": "SmoothTop1SVM",  # unused: clam_instance_loss computes the instance loss
            },
        ),
        "transmil": (
            TransMIL,
            {"n_layers": cfg.layers, "n_heads": cfg.heads, "dropout": cfg.att_dropout},
        ),
        "dsmil": (
            DSMIL,
            {"nonlinear_q": cfg.nonlinear_q, "nonlinear_v": cfg.nonlinear_v, "dropout": cfg.att_dropout},
        ),
    }
    if arch in torchmil_nets:
        make, kwargs = torchmil_nets[arch]
        net = make(in_shape=(in_dim,), att_dim=cfg.att_dim, feat_ext=feat_ext, **kwargs)
        if n_out != 1 and arch != "dsmil":
            # torchmil's one-logit head otherwise (the same draws as before: same numbers); TransMIL's
            # head reads the transformer width, the others the feature extractor's
            net.classifier = nn.Linear(cfg.att_dim if arch == "transmil" else width, n_out)
    elif arch in ("meanpool", "maxpool"):
        net = _Pool(
            feat_ext,
            width=width,
            n_out=n_out,
            mode=arch[:-4],
            head_hidden=cfg.head_hidden,
            dropout=cfg.dropout,
        )
    else:  # pragma: no cover - MILConfig checks arch
        raise ConfigError(f"mil.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    return MILNet(net, arch=arch, n_out=n_out, standardize=stand, cfg=cfg)
