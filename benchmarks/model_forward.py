"""Per-component ZoomLDM throughput: images/s and achieved GFLOP/s.

Components (one "image" = one 256 px tile / one 64x64 latent / one SSL grid):
  vq_encode     VQ-f4 encoder + quant_conv on [B, 3, 256, 256]
  unet_full     UNet forward (eps) on [B, 3, 64, 64] with a [B, 65, D] context
  unet_middle   UNet forward stopped after ``middle_block`` (what feature taps cost at most there)
  summarizer    SSL summarizer on an 8x8 grid (mag index 3)

Tile encoders (``--encoders uni,phikon`` or ``all``; names from ``zoomfeat.encoders.ENCODERS``):
one line per encoder, one "image" = one tile at the encoder's input size (224 px; CONCH v1.5 448),
forward only (preprocessing excluded), seeded random weights (full size: ViT-g encoders need
~4.5 GB of memory and a minute to initialise on a CPU).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` run on a meta-device copy of the
model (shapes only, nothing computed; 2 FLOPs per multiply-add, attention matmuls included,
norms/elementwise not counted).  Weights are random: speed does not depend on them.

Examples:
  python benchmarks/model_forward.py --config tiny --batch 8 --iters 5
  python benchmarks/model_forward.py --config zoomldm_brca --batch 1 --iters 2 --device cpu
  python benchmarks/model_forward.py --config zoomldm_brca --batch 64 --device cuda --autocast bf16 --channels-last
  python benchmarks/model_forward.py --components --encoders uni,phikon --batch 2 --iters 2 --device cpu
  python benchmarks/model_forward.py --components --encoders all --batch 64 --device cuda --autocast bf16
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


def _device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    )


def model_rows(args, device: torch.device, header: str) -> list[dict]:
    """One row per ZoomLDM component (``--components``)."""
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
        f"[{_device_name(device)}], "
        f"batch {args.batch}, autocast {args.autocast}, channels_last {args.channels_last}, "
        f"torch {torch.__version__}"
    )
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
    return rows


def encoder_rows(names: list[str], args, device: torch.device) -> list[dict]:
    """One throughput row per tile encoder: GFLOPs per tile (meta count), images/s on ``device``."""
    import warnings

    from zoomfeat.encoders import build_encoder, get_spec
    from zoomfeat.encoders.build import build_architecture, wrap

    rows = []
    for name in names:
        spec = get_spec(name)
        meta = wrap(spec, *build_architecture(spec, "meta"))
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            meta(torch.empty(args.batch, 3, spec.input_px, spec.input_px, device="meta"))
        flops = fc.get_total_flops()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights are the point here
            enc = build_encoder(name, allow_random_weights=True, device=device)
        build_s = time.perf_counter() - t0
        if args.channels_last:
            enc = enc.to(memory_format=torch.channels_last)
        x = torch.randn(
            args.batch, 3, spec.input_px, spec.input_px, generator=torch.Generator().manual_seed(0)
        )
        x = x.to(device)
        times = []
        with torch.inference_mode(), autocast(device, "fp32" if args.autocast == "none" else args.autocast):
            for i in range(args.warmup + args.iters):
                synchronize(device)
                t = time.perf_counter()
                enc(x)
                synchronize(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
        sec = statistics.median(times)
        row = {
            "component": f"enc:{name}",
            "config": spec.architecture,
            "device": str(device),
            "batch": args.batch,
            "autocast": args.autocast,
            "channels_last": args.channels_last,
            "params": sum(p.numel() for p in enc.parameters()),
            "embed_dim": spec.embed_dim,
            "input_px": spec.input_px,
            "build_s": build_s,
            "gflop_per_image": flops / args.batch / 1e9,
            "sec_per_batch": sec,
            "images_per_s": args.batch / sec,
            "achieved_gflops": flops / sec / 1e9,
            "iters": len(times),
        }
        rows.append(row)
        print(
            f"{row['component']:12s} {row['gflop_per_image']:10.2f} {sec * 1e3:10.1f} {row['images_per_s']:10.2f} "
            f"{row['achieved_gflops']:9.1f}   {spec.architecture}, {row['params'] / 1e6:.1f} M params, "
            f"{spec.embed_dim}-d, {spec.input_px} px",
            flush=True,
        )
        del enc
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", help="tiny | zoomldm_brca | path to a YAML")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per component (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (kernel set-up)")
    p.add_argument(
        "--components",
        nargs="*",
        default=list(COMPONENTS),
        choices=COMPONENTS,
        help="none: tile encoders only",
    )
    p.add_argument(
        "--encoders",
        default="",
        help="comma-separated tile encoders to time too (uni,phikon,...; 'all': the whole registry but tiny)",
    )
    p.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    from zoomfeat.encoders import ENCODERS

    names = [n for n in ENCODERS if n != "tiny"] if args.encoders == "all" else [
        n.strip() for n in args.encoders.split(",") if n.strip()
    ]  # fmt: skip
    unknown = [n for n in names if n not in ENCODERS]
    if unknown:
        p.error(f"unknown encoder(s) {', '.join(unknown)}: choose from {', '.join(ENCODERS)} or all")
    header = f"{'component':12s} {'GFLOP/img':>10s} {'ms/batch':>10s} {'images/s':>10s} {'GFLOP/s':>9s}"
    rows = []
    if args.components:
        rows += model_rows(args, device, header)
    if names:
        print(
            f"tile encoders on {device} [{_device_name(device)}], batch {args.batch}, autocast {args.autocast}, "
            f"random weights"
        )
        print(header)
        print("-" * len(header))
        rows += encoder_rows(names, args, device)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
