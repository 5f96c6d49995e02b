"""Tiny-model smoke run: ``python -m zoomfeat.model [--config tiny] [--steps 5] [--seed 0]``.

Builds ZoomLDM from a config (seeded random weights unless --checkpoint is given), conditions it on a
random SSL grid, samples a latent, decodes it and prints the shapes.
"""

from __future__ import annotations

import argparse
import time

import torch

from zoomfeat.model import ZoomLDM
from zoomfeat.runtime.device import resolve_device
from zoomfeat.runtime.units import mag_name


def main(argv: list[str] | None = None) -> dict[str, tuple[int, ...]]:
    p = argparse.ArgumentParser(prog="python -m zoomfeat.model", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", help="config name (tiny, zoomldm_brca) or YAML path")
    p.add_argument(
        "--checkpoint", default=None, help="weights (native dir, official .ckpt, hub id); default: random"
    )
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "plms"])
    p.add_argument(
        "--mag", type=int, default=2, help=f"magnification index (0={mag_name(0)}, 2={mag_name(2)}, ...)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    args = p.parse_args(argv)
    device = resolve_device(args.device)

    t0 = time.perf_counter()
    model = ZoomLDM.load(
        args.checkpoint, config=args.config, allow_random_weights=args.checkpoint is None, seed=args.seed
    ).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    side = 2**args.mag  # grids above 8x8 are pooled inside condition()
    grid = torch.randn(1, model.ssl_channels, side, side, generator=g, device=device)
    with torch.inference_mode():
        context = model.condition(grid, args.mag)
        latent = model.sample(context, steps=args.steps, sampler=args.sampler, generator=g)
        image = model.decode(latent)
        feats = model.taps(model.q_sample(latent, 200, generator=g), 200, context)
    shapes = {
        "ssl_grid": tuple(grid.shape),
        "context": tuple(context.shape),
        "latent": tuple(latent.shape),
        "image": tuple(image.shape),
        **{f"tap {k}": tuple(v.shape) for k, v in feats.items()},
    }
    print(
        f"ZoomLDM '{model.name}' ({model.checkpoint_id}) on {device}: "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
    )
    for k, v in shapes.items():
        print(f"  {k:24s} {list(v)}")
    print(f"  {args.sampler} {args.steps} steps + decode in {time.perf_counter() - t0:.1f} s")
    return shapes


def cli(argv: list[str] | None = None) -> None:
    """The command line: user errors are one line (``zoomfeat model: error: ...``, exit status 2)."""
    from zoomfeat.cli import report_errors

    report_errors("model", main, argv)


if __name__ == "__main__":
    cli()
