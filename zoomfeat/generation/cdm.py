"""The Conditioning Diffusion Model (CDM): a DiT that samples ZoomLDM's 65x512 summarizer output.

docs/generation.md, "CDM" ([R] ``cdm_dit/models.py``, ``cdm_dit/diffusion/*``, ``train_cdm.py``,
``cdm_measure_fid.py``); golden G7.

**What it generates** [R]: the summarizer output ``c = Summarizer(grid, mag)`` transposed to
[B, 512, 65] (not raw SSL embeddings). A sample, transposed back to [B, 65, 512], is the UNet's
cross-attention context directly (no summarizer), so a patch can be generated without a reference
image: ``ZoomLDM.sample(cdm_sample.transpose(1, 2), ...)``.

**DiT over 65 tokens** [R]: one token per context position, ``x_embedder = Linear(C -> D)`` plus a
fixed 1-D sin-cos position embedding ([sin | cos], omega_i = 10000^(-i/(D/2)), float64);
conditioning vector ``c = MLP(freq(t)) + Embedding(8, D)[mag]`` with freq(t) = [cos | sin] of 128
frequencies (max period 10^4); adaLN-Zero blocks::

    (shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(c), 6D)
    x += gate1 * Attn(LN(x) (1 + scale1) + shift1);  x += gate2 * MLP(LN(x) (1 + scale2) + shift2)

(LN without affine, eps 1e-6; timm Attention with qkv bias; tanh-GELU MLP 4D); final
``Linear(LN(x) (1 + scale) + shift) -> 2C`` (learned sigma), output [B, 2C, 65]. Variants S/B/L/XL.
The official blocks run through ``torch.utils.checkpoint`` (numerically the identity); here only
when training with ``grad_checkpointing``.

**Diffusion** [R]: T = 1000, ``squaredcos_cap_v2``: beta_i = min(1 - abar((i+1)/T)/abar(i/T), 0.999),
abar(s) = cos^2((s + 0.008)/1.008 pi/2), float64 arrays, lookups ``arr[t].float()``;
x0-prediction; learned-range variance ``log sigma^2 = f log beta_t + (1 - f) log betatilde_t``,
f = (v + 1)/2; loss = mean((x0 - x0hat)^2) + vb (KL in bits, or the discretised-Gaussian NLL at
t = 0; the mean is detached for vb). Respacing "R" keeps ``round(k (T-1)/(R-1))``, k < R, with new
betas ``1 - abar_k/abar_prev``; the model receives the *original* timestep. DDIM (eta 0, no
clipping): ``eps = (sqrt(1/abar) x - x0hat) / sqrt(1/abar - 1)``,
``x_prev = sqrt(abar_prev) x0hat + sqrt(1 - abar_prev) eps`` (the last step returns x0hat).

**Weights** [R]/[I]: a bare state_dict or one under ``ema`` (the official ``{model, ema, opt,
args}`` checkpoint), read with ``zoomfeat.runtime.weights.load_state_dict_file`` (never unpickling
code); the variant is an argument (the official FID script parses it from the path).

**Training** [R]: AdamW lr 1e-4, weight decay 0, EMA 0.9999, t ~ U{0..999}, magnification drawn
uniformly per sample, target = the summarizer output of a standardised, pooled grid
(:func:`train_cdm`; the data come from ``prepare``'s shards through the entry point).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoomfeat.runtime.errors import ConfigError, WeightsError

#: DiT variants: (depth, hidden size, heads) [R] ``DiT_models``; TINY is the golden G7 test size
VARIANTS = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
    "TINY": (2, 64, 4),
}
NUM_TOKENS = 65


# ----------------------------------------------------------------------------------------------
# model


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens x [B, N, D]: ``x (1 + scale) + shift`` (scale, shift [B, D])."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_1d(dim: int, n: int) -> np.ndarray:
    """[n, dim] fixed 1-D position embedding, [sin | cos], float64 frequencies [R]::

    pe[p] = [sin(p omega_0) .. sin(p omega_{dim/2-1}) | cos(p omega_0) .. ],  omega_i = 10000^(-i / (dim/2))
    """
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", np.arange(n, dtype=np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


class TimestepEmbedder(nn.Module):
    """``MLP(freq(t))``: Linear-SiLU-Linear over ``freq(t) = [cos(t f_i) | sin(t f_i)]``,
    f_i = max_period^(-i / half), i < half (cos first, as the official DiT)."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.freq_dim))


class LabelEmbedder(nn.Module):
    """``Embedding(num_classes, D)[y]``: y is the magnification index (no null class: no CFG)."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class Attention(nn.Module):
    """timm ``Attention`` (qkv bias, no qk-norm) with the same parameter names."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block (docs/generation.md, "CDM")::

    (sh1, sc1, g1, sh2, sc2, g2) = Linear(SiLU(c), 6D)
    x += g1 Attn(LN(x) (1 + sc1) + sh1);   x += g2 MLP(LN(x) (1 + sc2) + sh2)
    """

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    """``Linear(LN(x) (1 + scale) + shift)`` with ``(shift, scale) = Linear(SiLU(c), 2D)``."""

    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def _last_linear(seq: nn.Sequential) -> nn.Linear:
    """The final ``Linear`` of an adaLN modulation ``Sequential(SiLU, Linear)``."""
    lin = seq[-1]
    if not isinstance(lin, nn.Linear):
        raise TypeError(f"expected a Linear at the end of {seq}")
    return lin


class DiT(nn.Module):
    """CDM DiT: x [B, C, 65] (C = context width), t [B], y [B] (mag index) -> [B, 2C, 65].

    docs/generation.md, "CDM": tokens ``h = Linear(x^T) + pe``, conditioning
    ``c = MLP(freq(t)) + Embedding[y]``, ``depth`` :class:`DiTBlock` s, then :class:`FinalLayer`
    to [x0hat | v] (2C channels, learned sigma), transposed back to [B, 2C, 65].
    """

    def __init__(
        self,
        *,
        in_channels: int = 512,
        hidden_size: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 8,
        num_tokens: int = NUM_TOKENS,
        learn_sigma: bool = True,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(f"DiT hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_tokens = num_tokens
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.x_embedder = nn.Linear(in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, self.out_channels)
        self.initialize_weights()

    @classmethod
    def variant(cls, name: str, in_channels: int = 512, **kwargs: Any) -> DiT:
        """``DiT.variant("B")`` (also ``"DiT-B"``): the official sizes (docs/generation.md, "CDM")."""
        key = name.upper().removeprefix("DIT-")
        if key not in VARIANTS:
            raise ConfigError(
                f"unknown DiT variant {name!r}: use one of {', '.join('DiT-' + v for v in VARIANTS)}"
            )
        depth, hidden, heads = VARIANTS[key]
        return cls(in_channels=in_channels, hidden_size=hidden, depth=depth, num_heads=heads, **kwargs)

    def initialize_weights(self) -> None:
        """The official init: xavier Linear, zero biases, N(0, 0.02) embeddings, zero adaLN/final."""

        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

        self.apply(basic)
        pe = sincos_1d(self.pos_embed.shape[-1], self.num_tokens)
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for layer in self.t_embedder.mlp:  # its two Linear layers, in order
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        zero = [_last_linear(b.adaLN_modulation) for b in self.blocks if isinstance(b, DiTBlock)]
        zero += [_last_linear(self.final_layer.adaLN_modulation), self.final_layer.linear]
        for lin in zero:
            nn.init.constant_(lin.weight, 0)
            nn.init.constant_(lin.bias, 0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.in_channels or x.shape[2] != self.num_tokens:
            raise ValueError(
                f"CDM input must be [B, {self.in_channels}, {self.num_tokens}], got {tuple(x.shape)}"
            )
        h = self.x_embedder(x.transpose(1, 2)) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return self.final_layer(h, c).transpose(1, 2)


def load_cdm(
    path: str | Path, variant: str | None = "B", in_channels: int = 512, prefer: str = "ema", **kwargs: Any
) -> DiT:
    """A DiT with weights from ``path``: a bare state_dict or a checkpoint holding ``ema`` (or ``model``).

    Args:
        variant: ``S``/``B``/``L``/``XL`` (the official sizes), or None to build ``DiT(**kwargs)``.
        in_channels: the LDM's context width (512 for the released model).
        prefer: ``"ema"`` (default; the official sampling uses ``sd["ema"]``) or ``"model"``.

    The file is read without unpickling code (``runtime.weights``); keys must match exactly.
    """
    from zoomfeat.runtime.weights import key_mismatch_lines, load_state_dict_file

    wrappers = ("ema", "model") if prefer == "ema" else ("model", "ema")
    sd = load_state_dict_file(path, wrappers=wrappers, tensors_only=True)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if variant is None:
        model = DiT(in_channels=in_channels, **kwargs)
        what = "CDM DiT"
    else:
        model = DiT.variant(variant, in_channels=in_channels, **kwargs)
        what = f"DiT-{variant.upper().removeprefix('DIT-')} CDM"
    lines = key_mismatch_lines(sd, model.state_dict())
    if lines:
        raise WeightsError(
            f"{path}: not a {what} state_dict (in_channels {in_channels}):\n" + "\n".join(lines)
        )
    model.load_state_dict(sd)
    return model.eval()
