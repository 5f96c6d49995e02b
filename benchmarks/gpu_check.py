"""One command that measures zoomfeat on a GPU machine and prints ONE table (issue 15).

    python benchmarks/gpu_check.py                       # the GPU check (full-size models, < 8 min on an H200)
    python benchmarks/gpu_check.py --smoke --device cpu  # tiny models, tiny sizes: proves the script (~1 min)
    bash benchmarks/gpu_check.sh                         # offline GPU machine: install carried wheels, then run

Everything runs offline with random weights (``allow_random_weights``: speed and agreement do not
depend on the weights' values). Sections (the ``section`` column of the table):

- ``matmul``: a large bf16 (and fp32) matrix product: the reference rate (TFLOP/s) every model
  figure is compared with (``%mm`` = model TFLOP/s / bf16 matmul TFLOP/s);
- ``model`` (and ``compile``, run last): VQ-f4 encode, the UNet up to each default tap (``middle_block``, ``output_blocks.4``)
  and UNI, in fp32/bf16, NCHW/channels_last, eager/``torch.compile`` (images/s, TFLOP/s, %mm);
  FLOPs counted by ``torch.utils.flop_counter`` (2 per multiply-add, matmuls and convolutions);
- ``extract``: end-to-end ``Extractor.extract`` of a synthetic 40x slide (0.25 um/px) in bf16 at
  batch 32/64/128 with 8/16 DataLoader workers: tiles/s, model TFLOP/s and %mm (the issue's goal:
  >= 40%), pipeline efficiency (the models alone on the same tiles, pre-loaded / end-to-end; target
  >= 0.9), peak GPU memory;
- ``batch``: features of the same slide across batch sizes on the GPU (max relative difference;
  0 = bitwise identical);
- ``agree``: GPU vs CPU fp32 features of the same tiles (one parent region of the slide): relative
  error ``|a - b| / |b|`` (max over rows of the row norms) for GPU fp32 and GPU bf16;
- ``mil``: the MIL benchmark (benchmarks/mil_speed.py), seconds per fold on the device;
- ``train``: training samples/s in bf16 at full size (benchmarks/train_step.py).

``--json PATH`` also writes the rows. ``--skip`` drops sections (e.g. ``--skip compile,mil``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SECTIONS = ("matmul", "model", "compile", "extract", "batch", "agree", "mil", "train")


class Table:
    """The one table: rows of (section, item, settings, figures)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()

    def add(self, section: str, item: str, settings: str, **figures) -> None:
        row = {"section": section, "item": item, "settings": settings, **figures}
        self.rows.append(row)
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
        print(
            f"  [{time.perf_counter() - self.t0:6.1f} s] {section:8s} {item:22s} {settings:34s} {shown}",
            flush=True,
        )

    def render(self) -> str:
        """Four columns: section, item, settings, and the row's figures as ``name=value``."""
        cells = [
            [r["section"], r["item"], r["settings"],
             "  ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in ("section", "item", "settings"))]
            for r in self.rows
        ]  # fmt: skip
        head = ["section", "item", "settings", "figures"]
        width = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
        line = "  ".join(h.ljust(w) for h, w in zip(head, width))
        out = [line, "-" * len(line)]
        out += ["  ".join(v.ljust(w) for v, w in zip(c, width)).rstrip() for c in cells]
        return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.2e}" if abs(v) < 1e-2 else f"{v:.3f}"
    return str(v)


def sync(device: torch.device) -> None:
    from zoomfeat.runtime.device import synchronize

    synchronize(device)


def timed(fn, device, iters: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------- matmul


def matmul_rate(table: Table, device: torch.device, n: int, iters: int) -> float:
    rates = {}
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        sec = timed(lambda a=a, b=b: a @ b, device, iters)
        rates[dtype] = 2 * n**3 / sec / 1e12
        table.add("matmul", f"{n}x{n} @ {n}x{n}", str(dtype).replace("torch.", ""), tflops=rates[dtype])
        del a, b
    return rates[torch.bfloat16]


# ---------------------------------------------------------------------------------------- models


def extract_config(args, **kw):
    from zoomfeat.features.config import ExtractConfig

    base = {
        "model": "tiny" if args.smoke else "zoomldm_brca",
        "encoder": "tiny" if args.smoke else "uni",
        "allow_random_weights": True,
        "progress": False,
        "device": str(args.dev),
        "tile_px": args.tile_px,
    }
    return ExtractConfig.from_kwargs(**{**base, **kw})


def set_memory_format(models, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in (models.model.vq, models.model.unet, models.encoder):
        m.to(memory_format=fmt)


def component_fns(models, batch: int, device):
    """{name: fn} of the four component calls on random inputs of the full tile size."""
    model, enc = models.model, models.encoder
    g = torch.Generator().manual_seed(0)
    px = models.tile_px
    images = (torch.rand(batch, 3, px, px, generator=g) * 2 - 1).to(device)
    s = models.latent_shape[-1]
    x_t = torch.randn(batch, model.latent_channels, s, s, generator=g).to(device)
    ctx = torch.randn(batch, 65, model.context_dim, generator=g).to(device)
    tiles = (torch.rand(batch, px, px, 3, generator=g) * 255).to(torch.uint8).to(device)
    uni_in = enc.preprocess(tiles)
    return {
        "vq_encode": lambda: model.encode(images),
        "unet->middle_block": lambda: model.taps(x_t, 200, ctx, ["middle_block"]),
        "unet->output_blocks.4": lambda: model.taps(x_t, 200, ctx, ["output_blocks.4"]),
        "uni" if not enc.name == "tiny" else "encoder(tiny)": lambda: enc(uni_in),
    }


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def model_section(table: Table, args, mm_rate: float, compile_only: bool = False) -> dict[str, float]:
    """Per-component throughput; returns GFLOP per image of each component. ``compile_only``: the
    ``torch.compile`` rows (bf16, channels_last), run last: their compiles take the longest."""
    from zoomfeat.features.models import FeatureModels
    from zoomfeat.runtime.device import autocast

    dev = args.dev
    models = FeatureModels(extract_config(args), dev)
    models.tile_px = args.tile_px
    flops1 = {k: count_flops(f) / 1e9 for k, f in component_fns(models, 1, dev).items()}
    variants = [("fp32", False, False), ("fp32", True, False), ("bf16", False, False), ("bf16", True, False)]
    if compile_only:
        variants = [("bf16", True, True)]
    elif args.smoke:  # the code path of each option, not the grid
        variants = [("fp32", False, False), ("bf16", True, False)]
    for precision, cl, comp in variants:
        set_memory_format(models, cl)
        fns = component_fns(models, args.batch, dev)
        for name, fn in fns.items():

            def call(fn=fn, precision=precision):
                with torch.inference_mode(), autocast(dev, precision):
                    return fn()

            try:
                t_c = 0.0
                if comp:
                    torch._dynamo.reset()
                    call = torch.compile(call)
                    t0 = time.perf_counter()
                    call()
                    sync(dev)
                    t_c = time.perf_counter() - t0
                sec = timed(call, dev, args.iters, warmup=args.warmup)
            except Exception as err:  # noqa: BLE001 - a failing variant is a finding, not the end
                table.add("model", name, f"{precision} cl={int(cl)} compile={int(comp)}", error=_err(err))
                continue
            tf = flops1[name] * args.batch / sec / 1e3
            extra = {"compile_s": t_c} if comp else {}
            table.add("model", name, f"{precision} cl={int(cl)} compile={int(comp)} b={args.batch}",
                      gflop_img=flops1[name], img_s=args.batch / sec, tflops=tf, pct_mm=100 * tf / mm_rate, **extra)  # fmt: skip
    set_memory_format(models, dev.type == "cuda")  # the pipeline's layout again
    torch._dynamo.reset()
    return flops1


def _err(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"


# ---------------------------------------------------------------------------------------- extraction


def make_slide(path: Path, size: int) -> Path:
    from zoomfeat.slide.synthetic import synthetic_he_image, write_synthetic_slide

    block = min(size, 4096)
    b = synthetic_he_image(block, block, seed=0, tissue_fraction=0.55)
    reps = -(-size // block)
    image = np.ascontiguousarray(np.tile(b, (reps, reps, 1))[:size, :size])
    return write_synthetic_slide(path, image=image, mpp=0.25, levels=4)


def zoomldm_flops(result, flops1: dict[str, float]) -> float:
    """Model GFLOP of one slide: UNI on 17 tiles per parent, VQ + UNet to the deepest tap per tile."""
    uni = next(v for k, v in flops1.items() if k.startswith(("uni", "encoder")))
    return 17 * result.n5 * uni + result.tiles * (flops1["vq_encode"] + flops1["unet->output_blocks.4"])


def extract_section(table: Table, args, slide: Path, work: Path, flops1: dict, mm_rate: float) -> dict:
    from zoomfeat.features.pipeline import Extractor

    sys.path.insert(0, str(REPO / "benchmarks"))
    from extract_throughput import models_only_seconds

    dev = args.dev
    outs = {}
    for bs in args.batches:
        models_s = None
        for w in args.workers:
            ex = Extractor(extract_config(args, batch_size=bs, num_workers=w, precision=args.precision))
            if models_s is None:
                if not args.smoke and bs == args.batches[0]:
                    models_only_seconds(ex, slide)  # warm-up once: kernels, allocator, page cache
                models_s, n = models_only_seconds(ex, slide)
            out = work / f"bags_b{bs}_w{w}"
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = ex.extract(slide, out)
            dt = time.perf_counter() - t0
            outs[(bs, w)] = out
            tf = zoomldm_flops(r, flops1) / dt / 1e3
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
            table.add("extract", f"{r.n20}+{r.n5} tiles 40x", f"{args.precision} b={bs} workers={w}",
                      tiles_s=r.tiles / dt, tflops=tf, pct_mm=100 * tf / mm_rate, efficiency=models_s / dt,
                      wait_s=ex.timings.get("wait", float("nan")), peak_gib=peak)  # fmt: skip
    return outs


def batch_section(table: Table, outs: dict, tile_px: int) -> None:
    from zoomfeat.bags import bag_path, open_bag

    keys = sorted(outs)
    ref_key = keys[0]
    for name in ("zoomldm_20x", "zoomldm_5x", "uni_20x"):
        ref = open_bag(bag_path(outs[ref_key], name, "gpu_check_40x", tile_px)).features
        worst = 0.0
        for k in keys[1:]:
            other = open_bag(bag_path(outs[k], name, "gpu_check_40x", tile_px)).features
            worst = max(worst, rel_err(other, ref))
        table.add("batch", name, f"vs b={ref_key[0]} w={ref_key[1]} ({len(keys)} runs)",
                  max_rel_diff=worst, identical=str(worst == 0.0))  # fmt: skip


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max over rows of |a_i - b_i| / |b_i| (Euclidean norms)."""
    if len(b) == 0:
        return 0.0
    num = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=1)
    den = np.maximum(np.linalg.norm(np.asarray(b, np.float64), axis=1), 1e-30)
    return float((num / den).max())


def agree_section(table: Table, args, work: Path) -> None:
    """The same tiles (one parent region, 1024 px at 20x) on the device (fp32, bf16) and the CPU (fp32)."""
    from zoomfeat.bags import bag_path, open_bag
    from zoomfeat.features.pipeline import Extractor

    small = make_slide(work / "gpu_check_agree.svs", 8 * args.tile_px)  # 40x: one parent region at 20x
    runs = [(args.dev, p) for p in args.agree_precisions] + [(torch.device("cpu"), "fp32")]
    outs = {}
    for dev, prec in runs:
        ex = Extractor(extract_config(args, device=str(dev), precision=prec, batch_size=32, num_workers=0,
                                      **{"tissue.min_tissue": 0.0}))  # fmt: skip
        out = work / f"agree_{dev.type}_{prec}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex.extract(small, out)
        outs[(dev.type, prec)] = out
    cpu = outs[("cpu", "fp32")]
    for prec in args.agree_precisions:
        for name in ("zoomldm_20x", "zoomldm_5x", "uni_20x"):
            a = open_bag(
                bag_path(outs[(args.dev.type, prec)], name, "gpu_check_agree", args.tile_px)
            ).features
            b = open_bag(bag_path(cpu, name, "gpu_check_agree", args.tile_px)).features
            table.add(
                "agree", name, f"{args.dev.type} {prec} vs cpu fp32 ({len(b)} tiles)", rel_err=rel_err(a, b)
            )


# ---------------------------------------------------------------------------------------- MIL, training


def mil_section(table: Table, args) -> None:
    import mil_speed

    argv = ["--mode", "fold", "--device", str(args.dev), "--epochs", "1" if args.smoke else "3"]
    if args.smoke:  # one aggregator on tiny bags; on a GPU every aggregator of conf/mil/
        argv += ["--bags", "20", "--instances", "32", "--dim", "32", "--aggregators", "abmil"]
    with contextlib.redirect_stdout(sys.stderr):
        r = mil_speed.main(argv)
    shape = "20x32x32" if args.smoke else "200x2000x1536"
    for name, timing in r.items():
        for n, s in timing["figures"].items():
            table.add("mil", f"{name} fold, {n} epochs", f"{shape} bags", s_per_fold=s)


def train_section(table: Table, args, work: Path) -> None:
    import train_step

    name = "tiny" if args.smoke else "zoomldm_brca"
    batch = 2 if args.smoke else args.train_batch
    steps = 1 if args.smoke else 5
    with contextlib.redirect_stdout(sys.stderr):
        r = train_step.bench_config(name, batch, steps, 1, args.dev, args.train_precision, False, 2, work)
    table.add("train", name, f"{args.train_precision} b={batch} steps={steps}", samples_s=r["samples_per_s"],
              **({"peak_gib": r["peak_mem_GiB"]} if "peak_mem_GiB" in r else {}))  # fmt: skip


# ---------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> Table:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--smoke", action="store_true", help="tiny models and sizes (any machine, ~1 min on 2 CPUs)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip", default="", help=f"comma-separated sections to skip: {', '.join(SECTIONS)}")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--with-compile", action="store_true", help="--smoke: the compile rows too (slow on a CPU)"
    )
    ap.add_argument(
        "--slide-px", type=int, default=None, help="side of the 40x synthetic slide (default 24576)"
    )
    ap.add_argument(
        "--precision", default=None, help="extraction precision (default bf16; fp32 with --smoke)"
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="start no section after this many seconds (default 420: the run ends within 8 min)",
    )
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    args.skip = {s for s in args.skip.split(",") if s}
    from zoomfeat.runtime.device import resolve_device

    args.dev = resolve_device(args.device)
    if args.smoke:
        # bf16 runs emulated (slowly) on most CPUs: only the model rows and nothing else use it
        args.batch, args.iters, args.warmup, args.mm_n = 1, 1, 0, 256
        args.precision = args.precision or "fp32"
        args.agree_precisions, args.train_precision = ("fp32",), "fp32"
        args.batches, args.workers = (4, 8), (1,)
        args.tile_px = 64  # 16x fewer pixels than the real 256 px tiles
        args.slide_px = args.slide_px or 512  # one 5x parent
        if not args.with_compile:
            args.skip.add("compile")  # CPU inductor compiles take minutes; the GPU run does them
        args.train_batch = 2
    else:
        args.batch, args.iters, args.warmup, args.mm_n = 64, 5, 2, 8192
        args.tile_px = 256
        args.precision = args.precision or "bf16"
        args.agree_precisions, args.train_precision = ("fp32", "bf16"), "bf16"
        args.batches, args.workers = (32, 64, 128), (8, 16)
        args.slide_px = args.slide_px or 24576  # ~1,400 kept 20x tiles
        args.train_batch = 32
    if args.dev.type == "cuda":
        where = f"{torch.cuda.get_device_name(args.dev)}, {torch.cuda.get_device_properties(args.dev).total_memory / 2**30:.0f} GiB"
    else:
        where = f"{torch.get_num_threads()} threads"
    print(f"gpu_check: device {args.dev} ({where}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{'SMOKE (tiny models)' if args.smoke else 'full-size models, random weights'}; skip {sorted(args.skip)}",
          flush=True)  # fmt: skip
    table = Table()
    work = Path(args.work or tempfile.mkdtemp(prefix="zoomfeat_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)

    def section(name, fn, *a):
        if name in args.skip:
            return None
        if time.perf_counter() - table.t0 > args.budget_s:
            table.add(
                name, "skipped", f"time budget {args.budget_s:.0f} s spent", note="rerun with --skip ..."
            )
            return None
        try:
            return fn(*a)
        except Exception as err:  # noqa: BLE001 - report and go on: one table at the end
            traceback.print_exc()
            table.add(name, "FAILED", "", error=_err(err))
            return None

    try:
        mm = section("matmul", matmul_rate, table, args.dev, args.mm_n, args.iters) or float("nan")
        flops1 = section("model", model_section, table, args, mm)
        if flops1 is None:
            from zoomfeat.features.models import FeatureModels

            models = FeatureModels(extract_config(args), args.dev)
            models.tile_px = args.tile_px
            flops1 = {k: count_flops(f) / 1e9 for k, f in component_fns(models, 1, args.dev).items()}
        t0 = time.perf_counter()
        slide = work / "gpu_check_40x.svs"
        if "extract" not in args.skip:
            make_slide(slide, args.slide_px)
            print(
                f"  synthetic 40x slide {args.slide_px} px written in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
        outs = section("extract", extract_section, table, args, slide, work, flops1, mm)
        if outs:
            section("batch", batch_section, table, outs, args.tile_px)
        section("agree", agree_section, table, args, work)
        section("mil", mil_section, table, args)
        section("train", train_section, table, args, work)
        section("compile", model_section, table, args, mm, True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\ngpu_check: {len(table.rows)} rows in {time.perf_counter() - table.t0:.0f} s on {args.dev} ({where})"
    )
    print(table.render(), flush=True)
    if args.json:
        args.json.write_text(json.dumps(table.rows, indent=2, default=str))
    failed = [r for r in table.rows if "error" in r]
    if failed:
        print(f"gpu_check: {len(failed)} row(s) with errors", file=sys.stderr)
        raise SystemExit(1)
    return table


if __name__ == "__main__":
    main()
