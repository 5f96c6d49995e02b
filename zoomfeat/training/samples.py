"""Sample grids written with every checkpoint: the data above the model's samples, per magnification.

For each magnification index of the data, ``n`` tiles at fixed, evenly spaced positions give the
conditions (their UNI grids); the grid's first row decodes their stored latents with the VQ, the
second row decodes samples drawn for the same conditions (classifier-free guidance, fixed
starting noise seeded by ``samples.seed`` and m), so grids of successive checkpoints compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from zoomfeat.runtime.device import autocast
from zoomfeat.training.config import SampleConfig
from zoomfeat.training.dataset import MultiScaleDataset
from zoomfeat.training.shards import MAG_NAMES

if TYPE_CHECKING:
    from zoomfeat.model.zoomldm import ZoomLDM


def pick_conditions(dataset: MultiScaleDataset, n: int) -> dict[int, dict[str, torch.Tensor]]:
    """``n`` tiles per magnification at evenly spaced positions of the data (fixed for a run).

    Returns:
        ``{m: {"latent": float32 (k, 3, 64, 64), "ssl": float32 (k, C, g, g)}}``, k <= n.
    """
    out = {}
    for m, ix in sorted(dataset.index.mags.items()):
        k = min(n, len(ix))
        rows = np.unique(np.linspace(0, len(ix) - 1, k).round().astype(int))
        tiles = [dataset.reader.read(m, int(i)) for i in rows]
        out[m] = {
            "latent": torch.from_numpy(np.stack([t["latent"] for t in tiles]).astype(np.float32)),
            "ssl": torch.from_numpy(np.stack([t["ssl"] for t in tiles]).astype(np.float32)),
        }
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) images in [-1, 1] -> uint8 (N, H, W, 3)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid_png(path: Path, rows: list[tuple[str, np.ndarray]], title: str) -> Path:
    """A labelled image grid: one row per (label, uint8 (n, H, W, 3) images)."""
    from PIL import Image, ImageDraw

    n = max(len(r) for _, r in rows)
    h, w = rows[0][1].shape[1:3]
    label_w, head_h, pad = 70, 16, 2
    canvas = Image.new("RGB", (label_w + n * (w + pad), head_h + len(rows) * (h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill=(0, 0, 0))
    for r, (label, imgs) in enumerate(rows):
        y = head_h + r * (h + pad)
        draw.text((4, y + h // 2 - 6), label, fill=(0, 0, 0))
        for c, img in enumerate(imgs):
            canvas.paste(Image.fromarray(img), (label_w + c * (w + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


@torch.no_grad()
def write_sample_grids(
    model: ZoomLDM,
    conditions: Mapping[int, Mapping[str, torch.Tensor]],
    *,
    out_dir: Path,
    cfg: SampleConfig,
    step: int,
    device: torch.device,
    precision: str = "fp32",
) -> list[Path]:
    """One PNG per magnification, ``out_dir/m{m}_{name}.png``: data above samples. Uses the
    weights the model holds (call inside ``ema.swapped_into``)."""
    paths = []
    was_training = model.unet.training, model.summarizer.training
    model.unet.eval()
    model.summarizer.eval()
    try:
        for m, cond in sorted(conditions.items()):
            latent = cond["latent"].to(device)
            ssl = cond["ssl"].to(device)
            g = torch.Generator().manual_seed(cfg.seed * 1000 + m)
            x_T = torch.randn(latent.shape, generator=g).to(device)
            with autocast(device, precision):
                ctx = model.condition(ssl, m)
                z = model.sample(
                    ctx.float(), steps=cfg.steps, guidance=cfg.guidance, sampler=cfg.sampler, x_T=x_T
                )
                real = model.decode(latent)
                fake = model.decode(z.float())
            name = f"m{m}_{MAG_NAMES[m]}.png"
            title = f"step {step}  magnification {MAG_NAMES[m]}  ({cfg.sampler} {cfg.steps} steps, guidance {cfg.guidance:g}, EMA weights)"
            paths.append(
                save_grid_png(out_dir / name, [("data", to_uint8(real)), ("sample", to_uint8(fake))], title)
            )
    finally:
        model.unet.train(was_training[0])
        model.summarizer.train(was_training[1])
    return paths
