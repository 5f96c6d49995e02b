"""The Conditioning Diffusion Model (CDM): a DiT that samples ZoomLDM's 65x512 summarizer output.

Spec section 5 ([R] ``cdm_dit/models.py``, ``cdm_dit/diffusion/*``, ``train_cdm.py``,
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

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoomfeat.runtime.errors import ConfigError, WeightsError
from zoomfeat.runtime.seeding import mix_seed

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
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_1d(dim: int, n: int) -> np.ndarray:
    """[n, dim] fixed 1-D position embedding, [sin | cos], float64 frequencies [R]."""
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", np.arange(n, dtype=np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


class TimestepEmbedder(nn.Module):
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
    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """CDM DiT: x [B, C, 65] (C = context width), t [B], y [B] (mag index) -> [B, 2C, 65]."""

    def __init__(
        self,
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
        """``DiT.variant("B")`` (also ``"DiT-B"``): the official sizes (spec 5.2)."""
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
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
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


# ----------------------------------------------------------------------------------------------
# diffusion (float64 NumPy arrays, as the official code)


def cosine_betas(steps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - abar((i + 1) / steps) / abar(i / steps), max_beta) for i in range(steps)], dtype=np.float64
    )


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The kept steps of respacing ``str(count)`` (one section): round(k (T-1)/(count-1)) [R]."""
    if not 1 <= count <= num_timesteps:
        raise ConfigError(f"CDM respacing must lie in [1, {num_timesteps}], got {count}")
    if count == 1:
        return [0]
    stride = (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return sorted(set(taken))


def _extract(arr: np.ndarray, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.from_numpy(arr).to(t.device)[t].float()
    return out.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)


class CDMDiffusion:
    """Gaussian diffusion with x0-prediction and learned-range variance, optionally respaced."""

    def __init__(
        self, betas: np.ndarray | None = None, respacing: int | None = None, num_timesteps: int = 1000
    ):
        base = cosine_betas(num_timesteps) if betas is None else np.asarray(betas, dtype=np.float64)
        self.timestep_map = np.arange(len(base))
        if respacing is not None:
            keep = space_timesteps(len(base), int(respacing))
            ac = np.cumprod(1.0 - base)
            last, new = 1.0, []
            for i, a in enumerate(ac):
                if i in keep:
                    new.append(1 - a / last)
                    last = a
            base = np.array(new, dtype=np.float64)
            self.timestep_map = np.array(keep)
        self.betas = base
        self.num_timesteps = len(base)
        b = base
        alphas = 1.0 - b
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        ac, acp = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        pv = b * (1.0 - acp) / (1.0 - ac)
        self.posterior_variance = pv
        self.posterior_log_variance_clipped = (
            np.log(np.append(pv[1], pv[1:])) if len(pv) > 1 else np.array([])
        )
        self.posterior_mean_coef1 = b * np.sqrt(acp) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - acp) * np.sqrt(alphas) / (1.0 - ac)

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """The original timestep the model receives for respaced index ``t`` (int64)."""
        return torch.as_tensor(self.timestep_map, device=t.device, dtype=torch.long)[t]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (
            _extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        mean = (
            _extract(self.posterior_mean_coef1, t, xt.shape) * x0
            + _extract(self.posterior_mean_coef2, t, xt.shape) * xt
        )
        return mean, _extract(self.posterior_log_variance_clipped, t, xt.shape)

    def p_mean_variance(
        self, out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        c = xt.shape[1]
        x0, v = torch.split(out, c, dim=1)
        min_log = _extract(self.posterior_log_variance_clipped, t, xt.shape)
        max_log = _extract(np.log(self.betas), t, xt.shape)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        mean, _ = self.q_posterior(x0, xt, t)
        return {"mean": mean, "log_variance": log_var, "pred_xstart": x0}

    def training_losses(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """loss = mse + vb (official MSE loss with learned-range variance; one model call)."""
        xt = self.q_sample(x0, t, noise)
        out = model(xt, self.model_t(t), y)
        c = xt.shape[1]
        pred, var = torch.split(out, c, dim=1)
        frozen = torch.cat([pred.detach(), var], dim=1)
        vb = self._vb_bpd(frozen, x0, xt, t)
        mse = ((x0 - pred) ** 2).mean(dim=tuple(range(1, x0.ndim)))
        return {"loss": mse + vb, "mse": mse, "vb": vb, "x_t": xt, "model_output": out}

    def _vb_bpd(self, out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        true_mean, true_logvar = self.q_posterior(x0, xt, t)
        p = self.p_mean_variance(out, xt, t)
        kl = normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"])
        kl = kl.mean(dim=tuple(range(1, x0.ndim))) / np.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        nll = nll.mean(dim=tuple(range(1, x0.ndim))) / np.log(2.0)
        return torch.where(t == 0, nll, kl)

    @torch.no_grad()
    def ddim_sample(
        self,
        model: Callable[..., torch.Tensor],
        z: torch.Tensor,
        y: torch.Tensor,
        tracker=None,
        record: dict[str, list] | None = None,
    ) -> torch.Tensor:
        """DDIM (eta 0, no clipping) from noise ``z`` over all (respaced) steps, high to low."""
        x = z
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            out = model(x, self.model_t(t), y)
            if tracker is not None:
                tracker.dit(x.shape[0])
            if record is not None:
                record.setdefault("x_in", []).append(x)
                record.setdefault("out", []).append(out)
            x0 = torch.split(out, x.shape[1], dim=1)[0]
            eps = (_extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x - x0) / _extract(
                self.sqrt_recipm1_alphas_cumprod, t, x.shape
            )
            ap = _extract(self.alphas_cumprod_prev, t, x.shape)
            x = x0 * torch.sqrt(ap) + torch.sqrt(1 - ap) * eps
        return x


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """The official decoder NLL (assumes [-1, 1] data quantised to 1/255; kept for parity)."""
    centered = x - means
    inv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(delta.clamp(min=1e-12))),
    )


# ----------------------------------------------------------------------------------------------
# sampling and training


def sample_contexts(
    cdm: DiT,
    mag: int,
    n: int,
    respacing: int = 200,
    generator: torch.Generator | None = None,
    z: torch.Tensor | None = None,
    tracker=None,
) -> torch.Tensor:
    """``n`` CDM samples at magnification index ``mag``, as UNet contexts [n, 65, C] (spec 5.5)."""
    if not 0 <= int(mag) < cdm.num_classes:
        raise ConfigError(f"CDM magnification index {mag} out of range 0..{cdm.num_classes - 1}")
    dev = next(cdm.parameters()).device
    if z is None:
        g_dev = generator.device if generator is not None else dev
        z = torch.randn((n, cdm.in_channels, cdm.num_tokens), generator=generator, device=g_dev)
    z = z.to(dev).float()
    y = torch.full((z.shape[0],), int(mag), dtype=torch.long, device=dev)
    x = CDMDiffusion(respacing=respacing).ddim_sample(cdm, z, y, tracker)
    return x.transpose(1, 2).contiguous()


@dataclass
class CDMTrainOptions:
    """The official recipe (spec 5.4) with sizes for a run: steps, batch, lr, EMA decay, seed."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    seed: int = 0
    grad_checkpointing: bool = False
    log_every: int = 100
    checkpoint_every: int = 50_000


def cdm_targets(ldm, grids: torch.Tensor, mags: torch.Tensor) -> torch.Tensor:
    """Training targets [B, C, 65]: the LDM summarizer output of standardised grids, transposed [R]."""
    with torch.no_grad():
        return ldm.condition(grids, mags).float().transpose(1, 2)


def grid_batches(
    ldm,
    counts: Mapping[int, int],
    read: Callable[[int, int], Any],
    batch_size: int,
    seed: int = 0,
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """``batches(step)`` for :func:`train_cdm` from tiles of prepared data (spec 5.4).

    Each sample draws a magnification uniformly among those present (the official draws among
    all 8), then a tile uniformly; ``read(m, i)`` returns its raw SSL grid [C, g, g]. The target
    is the LDM summarizer output of the pooled, standardised grid (``ZoomLDM.condition``),
    transposed to [C_ctx, 65]. The draw depends on (seed, step) only.
    """
    mags = sorted(m for m, n in counts.items() if n > 0)
    if not mags:
        raise ConfigError("CDM training: the data hold no tiles")

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(mix_seed(int(seed), int(step), 1))
        ms = [mags[j] for j in torch.randint(len(mags), (batch_size,), generator=g).tolist()]
        idx = [int(torch.randint(counts[m], (1,), generator=g)) for m in ms]
        out = torch.empty(batch_size, ldm.context_dim, NUM_TOKENS)
        by_side: dict[tuple[int, ...], list[int]] = {}
        grids = [torch.as_tensor(np.asarray(read(m, i))).float() for m, i in zip(ms, idx)]
        for k, grid in enumerate(grids):
            by_side.setdefault(tuple(grid.shape), []).append(k)
        for ks in by_side.values():
            grid = torch.stack([grids[k] for k in ks])
            out[ks] = cdm_targets(ldm, grid, torch.tensor([ms[k] for k in ks])).cpu()
        return out, torch.tensor(ms)

    return batches


def train_cdm(
    cdm: DiT,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    opts: CDMTrainOptions,
    state: Mapping[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``cdm`` on ``batches(step) -> (target [B, C, 65], mag [B])``; returns ``{model, ema, opt, step}``.

    The batch and the timesteps/noise of a step depend on the step number only (seeded with
    ``mix_seed(seed, step)``), so a resumed run continues exactly as an uninterrupted one.

    ``state``: a previous return value or saved checkpoint to resume from. ``save(state)`` is
    called every ``checkpoint_every`` steps and at the end (the caller writes it atomically).
    """
    dev = next(cdm.parameters()).device
    diffusion = CDMDiffusion()
    ema = copy.deepcopy(cdm).requires_grad_(False)
    opt = torch.optim.AdamW(
        [p for p in cdm.parameters() if p.requires_grad], lr=opts.lr, weight_decay=opts.weight_decay
    )
    step = 0
    if state is not None:
        cdm.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = int(state.get("step", 0))
    cdm.grad_checkpointing = opts.grad_checkpointing
    cdm.train()
    while step < opts.steps:
        gen = torch.Generator().manual_seed(mix_seed(int(opts.seed), step))
        x0, y = batches(step)
        x0, y = x0.to(dev).float(), y.to(dev).long()
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        loss = diffusion.training_losses(cdm, x0, t, y, noise)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), cdm.parameters()):
                pe.mul_(opts.ema_decay).add_(pm.detach(), alpha=1 - opts.ema_decay)
        step += 1
        if log is not None and (step % opts.log_every == 0 or step == opts.steps):
            log(f"step {step}/{opts.steps} loss {loss.item():.4f}")
        if save is not None and step % opts.checkpoint_every == 0:
            save({"model": cdm.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step})
    cdm.eval()
    out = {"model": cdm.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step}
    if save is not None:
        save(out)
    return out
