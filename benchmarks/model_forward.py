"""Per-component ZoomLDM throughput: images/s and achieved GFLOP/s.

Components (one "image" = one 256 px tile / one 64x64 latent / one SSL grid):
  vq_encode     VQ-f4 encoder + quant_conv on [B, 3, 256, 256]
  unet_full     UNet forward (eps) on [B, 3, 64, 64] with a [B, 65, D] context
  unet_middle   UNet forward stopped after ``middle_block`` (what feature taps cost at most there)
  summarizer    SSL summarizer on an 8x8 grid (mag index 3)

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` run on a meta-device copy of the
model (shapes only, nothing computed; 2 FLOPs per multiply-add, attention matmuls included,
norms/elementwise not counted).  Weights are random: speed does not depend on them.

Examples:
  python benchmarks/model_forward.py --config tiny --batch 8 --iters 5
  python benchmarks/model_forward.py --config zoomldm_brca --batch 1 --iters 2 --device cpu
  python benchmarks/model_forward.py --config zoomldm_brca --batch 64 --device cuda --autocast bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoomfeat.model import ZoomLDM  # noqa: E402
from zoomfeat.runtime.device import autocast, resolve_device, synchronize  # noqa: E402

COMPONENTS = ("vq_encode", "unet_full", "unet_middle", "summarizer")


def make_inputs(
    model: ZoomLDM, batch: int, device: str | torch.device, gen: torch.Generator | None = None
) -> dict:
    def rnd(*shape):
        if torch.device(device).type == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=gen).to(device)

    s = model.latent_size
    return {
        "images": rnd(batch, 3, model.image_size, model.image_size).clamp(-1, 1),
        "x_t": rnd(batch, model.latent_channels, s, s),
        "context": rnd(batch, 65, model.context_dim),
        "grid": rnd(batch, model.ssl_channels, 8, 8),
    }


def runner(model: ZoomLDM, name: str, inp: dict):
    t = 200
    if name == "vq_encode":
        return lambda: model.encode(inp["images"])
    if name == "unet_full":
        return lambda: model.eps(inp["x_t"], t, inp["context"])
    if name == "unet_middle":
        return lambda: model.taps(inp["x_t"], t, inp["context"], ["middle_block"])
    if name == "summarizer":
        return lambda: model.condition(inp["grid"], 3)
    raise ValueError(f"unknown component {name!r}; choose from {COMPONENTS}")


def count_flops(meta_model: ZoomLDM, name: str, batch: int) -> int:
    inp = make_inputs(meta_model, batch, "meta")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        runner(meta_model, name, inp)()
    return fc.get_total_flops()


def bench(
    model: ZoomLDM, name: str, inp: dict, iters: int, warmup: int, device: torch.device, precision: str
):
    fn = runner(model, name, inp)
    times = []
    with torch.inference_mode(), autocast(device, "fp32" if precision == "none" else precision):
        for i in range(warmup + iters):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", help="tiny | zoomldm_brca | path to a YAML")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per component (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (kernel set-up)")
    p.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=COMPONENTS)
    p.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    meta = ZoomLDM.from_config(args.config, device="meta")
    t0 = time.perf_counter()
    model = ZoomLDM.from_config(args.config, seed=0).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    build_s = time.perf_counter() - t0
    inp = make_inputs(model, args.batch, device, torch.Generator().manual_seed(0))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"ZoomLDM '{model.name}' ({n_params / 1e6:.1f} M params, built in {build_s:.1f} s) on {device} "
        f"[{torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}], "
        f"batch {args.batch}, autocast {args.autocast}, channels_last {args.channels_last}, "
        f"torch {torch.__version__}"
    )
    header = f"{'component':12s} {'GFLOP/img':>10s} {'ms/batch':>10s} {'images/s':>10s} {'GFLOP/s':>9s}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.components:
        flops = count_flops(meta, name, args.batch)
        times = bench(model, name, inp, args.iters, args.warmup, device, args.autocast)
        sec = statistics.median(times)
        row = {
            "component": name,
            "config": model.name,
            "device": str(device),
            "batch": args.batch,
            "autocast": args.autocast,
            "channels_last": args.channels_last,
            "gflop_per_image": flops / args.batch / 1e9,
            "sec_per_batch": sec,
            "images_per_s": args.batch / sec,
            "achieved_gflops": flops / sec / 1e9,
            "iters": len(times),
        }
        rows.append(row)
        print(
            f"{name:12s} {row['gflop_per_image']:10.2f} {sec * 1e3:10.1f} {row['images_per_s']:10.2f} "
            f"{row['achieved_gflops']:9.1f}",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
