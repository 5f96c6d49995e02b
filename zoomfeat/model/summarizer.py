"""The SSL summarizer of ZoomLDM (official ``EmbeddingViT2_5``): UNI grid + magnification -> context.

Token layout (golden README, verified on the official outputs):
  * every grid position becomes one token ``dim_reduce(feature)`` in row-major (h, w) order;
  * the n = h*w tokens sit centred in 64 grid slots, slots ``32 - n//2 ... 32 - n//2 + n - 1``
    (1x1 -> slot 32, 2x2 -> 30..33, 4x4 -> 24..39, 8x8 -> all); the other slots hold the learned
    ``pad_token``;
  * the magnification token ``mag_embedding[mag]`` goes first: 65 tokens;
  * a torchvision-style pre-LN ViT encoder (+ ``pos_embedding``, ``num_layers`` blocks, final LN
    eps 1e-6), then ``final_proj`` and ``layer_norm`` (eps 1e-5).

Parameter names follow torchvision's ``vision_transformer.Encoder`` so that the official
``cond_stage_model.*`` state_dict maps 1:1 (strip the prefix).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from zoomfeat.runtime.units import NUM_MAGS, mag_names_for

GRID = 8  # the summarizer sees at most an 8x8 grid (64 slots)
NUM_SLOTS = GRID * GRID
NORM_EPS = 1e-8  # normalize_ssl: (x - mean_c) / (std_c + 1e-8)


def prepare_ssl_grid(grid: torch.Tensor) -> torch.Tensor:
    """Official dataloader preprocessing of a raw SSL grid [B, C, h, w] (float32 math).

    Grids larger than 8x8 are average-pooled to 8x8 (``adaptive_avg_pool2d``); then every spatial
    position is standardised over the channel axis with the unbiased std: (x - mean) / (std + 1e-8).
    """
    if grid.ndim != 4:
        raise ValueError(f"SSL grid must be [B, C, h, w], got shape {tuple(grid.shape)}")
    x = grid.float()
    if x.shape[-2] > GRID or x.shape[-1] > GRID:
        x = F.adaptive_avg_pool2d(x, GRID)
    mean = x.mean(dim=1, keepdim=True)
    std = x.std(dim=1, keepdim=True)
    return (x - mean) / (std + NORM_EPS)


class MLPBlock(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (torchvision naming: mlp.0, mlp.3)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN1(x)); then + MLP(LN2(.))."""

    def __init__(
        self,
        *,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(
            hidden_dim, num_heads, dropout=attention_dropout, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """torchvision ``vision_transformer.Encoder``: pos_embedding, layers.encoder_layer_i, ln."""

    def __init__(
        self,
        *,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            OrderedDict(
                (
                    f"encoder_layer_{i}",
                    EncoderBlock(
                        num_heads=num_heads,
                        hidden_dim=hidden_dim,
                        mlp_dim=mlp_dim,
                        dropout=dropout,
                        attention_dropout=attention_dropout,
                    ),
                )
                for i in range(num_layers)
            )
        )
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class Summarizer(nn.Module):
    """UNI grid [B, C, h, w] (h, w <= 8, already standardised) + mag index [B] -> context [B, 65, D]."""

    def __init__(
        self,
        *,
        input_channels: int = 1024,
        hidden_channels: int = 512,
        output_channels: int = 512,
        num_layers: int = 12,
        num_heads: int = 8,
        vit_mlp_dim: int = 2048,
        num_mags: int = NUM_MAGS,
        p_uncond: float = 0.1,
    ):
        super().__init__()
        if output_channels != hidden_channels:
            raise ValueError(
                f"summarizer output_channels ({output_channels}) must equal hidden_channels ({hidden_channels}): "
                "the official final LayerNorm has size hidden_channels and runs after final_proj"
            )
        if hidden_channels % num_heads:
            raise ValueError(
                f"summarizer hidden_channels {hidden_channels} is not divisible by num_heads {num_heads}"
            )
        self.input_channels = input_channels
        self.hidden_channels = hidden_channels
        self.output_channels = output_channels
        self.num_mags = num_mags
        self.p_uncond = p_uncond  # training-time context dropout rate (used by the trainer, not here)
        self.pad_token = nn.Parameter(torch.empty(1, 1, hidden_channels).normal_(std=0.02))
        self.mag_embedding = nn.Embedding(num_mags, hidden_channels)
        self.dim_reduce = nn.Linear(input_channels, hidden_channels)
        self.encoder = Encoder(
            seq_length=NUM_SLOTS + 1,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_channels,
            mlp_dim=vit_mlp_dim,
        )
        self.final_proj = nn.Linear(hidden_channels, output_channels)
        self.layer_norm = nn.LayerNorm(hidden_channels)

    def check_inputs(self, grid: torch.Tensor, mag: int | torch.Tensor) -> torch.Tensor:
        """Validate a (prepared) grid and return ``mag`` as LongTensor[B] on the grid's device."""
        if grid.ndim != 4:
            raise ValueError(f"SSL grid must be [B, C, h, w], got shape {tuple(grid.shape)}")
        b, c, h, w = grid.shape
        if c != self.input_channels:
            raise ValueError(
                f"SSL grid has {c} channels but this model's summarizer expects {self.input_channels} "
                f"(the SSL encoder's embedding width, e.g. 1024 for UNI)"
            )
        if h * w > NUM_SLOTS or h > GRID or w > GRID:
            raise ValueError(
                f"SSL grid {h}x{w} is larger than {GRID}x{GRID}: pool it first (prepare_ssl_grid)"
            )
        mag_t = torch.as_tensor(mag)
        if mag_t.is_floating_point() or mag_t.is_complex():
            raise TypeError(
                f"magnification index must be an integer (0={mag_names_for(self.num_mags)[0]} ... "
                f"{self.num_mags - 1}={mag_names_for(self.num_mags)[-1]}), got {mag!r}"
            )
        mag_t = mag_t.long().reshape(-1)
        if mag_t.numel() == 1 and b != 1:
            mag_t = mag_t.expand(b)
        if mag_t.numel() != b:
            raise ValueError(f"got {mag_t.numel()} magnification indices for a batch of {b}")
        if (
            not mag_t.is_meta
            and mag_t.numel()
            and (int(mag_t.min()) < 0 or int(mag_t.max()) >= self.num_mags)
        ):
            raise ValueError(
                f"magnification index out of range: got {sorted(set(mag_t.tolist()))}, valid 0..{self.num_mags - 1} "
                f"({' '.join(f'{m}={n}' for m, n in enumerate(mag_names_for(self.num_mags)))})"
            )
        return mag_t.to(grid.device)

    def tokens(self, grid: torch.Tensor, mag: int | torch.Tensor) -> torch.Tensor:
        """Encoder input sequence [B, 65, H] (mag token + 64 grid slots), before pos_embedding."""
        mag_t = self.check_inputs(grid, mag)
        b, _, h, w = grid.shape
        n = h * w
        feats = self.dim_reduce(grid.flatten(2).transpose(1, 2).to(self.dim_reduce.weight.dtype))  # [B, n, H]
        start = NUM_SLOTS // 2 - n // 2
        slots = self.pad_token.to(feats.dtype).expand(b, NUM_SLOTS, -1)
        if n == NUM_SLOTS:
            slots = feats
        else:
            slots = torch.cat([slots[:, :start], feats, slots[:, start + n :]], dim=1)
        mag_tok = self.mag_embedding(mag_t).to(feats.dtype).unsqueeze(1)
        return torch.cat([mag_tok, slots], dim=1)

    def forward(self, grid: torch.Tensor, mag: int | torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.tokens(grid, mag))
        return self.layer_norm(self.final_proj(x))
