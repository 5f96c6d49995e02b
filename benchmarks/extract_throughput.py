"""Extraction throughput, pipeline efficiency, the deepest-tap saving and memory vs slide size.

    python benchmarks/extract_throughput.py                 # everything (tiny + a few full-size tiles)
    python benchmarks/extract_throughput.py --skip-full     # tiny only
    python benchmarks/extract_throughput.py --json out.json

Figures (the pipeline of docs/ARCHITECTURE.md, "Data flow"; targets below):

1. Pipeline efficiency: end-to-end tiles/s of ``Extractor.extract`` on a synthetic slide (slide
   opening, tissue detection, reading regions in DataLoader workers, UNI, Summarizer, VQ, UNet,
   writing the six bags) divided by the models' own tiles/s on the very same tiles, pre-loaded in
   memory and pushed through the same batched model calls. Target >= 0.9. Best of interleaved
   repeats; on a shared machine also read ``in_models_share`` (time inside model calls / wall
   time of the same end-to-end run), which other processes' load cannot skew.
2. Stopping the UNet at the deepest tap: time (and FLOPs) of ``taps(..., [middle_block,
   output_blocks.4])`` vs the full UNet forward ``eps``.
3. Peak RSS of one extraction in a fresh subprocess for a slide and one with 4x the area
   (4x the tiles). Target: flat within 10%.

Full-size models (random weights, CPU) get a handful of tiles; the tiny model does the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_slide(path: Path, size: int, seed: int = 0, tissue: float = 0.4) -> Path:
    from zoomfeat.slide.synthetic import write_synthetic_slide

    if not path.exists():
        write_synthetic_slide(
            path, width=size, height=size, mpp=0.5, levels=3, seed=seed, tissue_fraction=tissue
        )
    return path


def settings(model: str, **kw) -> dict:
    base = {
        "model": model,
        "encoder": "uni" if model == "zoomldm_brca" else "tiny",
        "allow_random_weights": True,
        "progress": False,
    }
    return {**base, **kw}  # ExtractConfig.from_kwargs keywords (the command line's names)


# ----------------------------------------------------------------------------------------------- 1


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (DataLoader workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def models_only_seconds(ex, slide_path: Path) -> tuple[float, int]:
    """Time the model calls alone on the slide's tiles, pre-loaded in memory, batched as the pipeline does."""
    from zoomfeat.features.data import CHILDREN, NoiseSpec, ParentRegions
    from zoomfeat.features.slide_extraction import SlideExtraction
    from zoomfeat.runtime.device import synchronize
    from zoomfeat.runtime.units import CHILDREN_PER_SIDE
    from zoomfeat.slide import Slide, TileGrid

    cfg, models = ex.cfg, ex.models
    slide = Slide.open(slide_path)
    grid = TileGrid.build(slide, tile_px=cfg.tile_px, min_tissue=cfg.tissue.min_tissue, progress=False)
    noise_spec = NoiseSpec(cfg.seed, slide.slide_id, models.latent_shape, cfg.features.ensemble)
    ds = ParentRegions(slide, grid, noise_spec)
    items = [ds[i] for i in range(len(ds))]  # everything read before the clock starts
    kept = grid.children.kept.reshape(-1, CHILDREN)
    images = torch.cat([torch.cat([it["children"], it["parent"][None]]) for it in items]).to(ex.device)
    bs = cfg.batch_size
    t0 = time.perf_counter()
    emb = torch.cat([models.embed(images[i : i + bs]) for i in range(0, len(images), bs)]).view(
        len(items), CHILDREN + 1, -1
    )
    # ZoomLDM items in pipeline order: kept children (mag 0) then the parent (mag 2), per parent
    z_imgs, grids, mags, noise = [], [], [], []
    for i, it in enumerate(items):
        rows = torch.as_tensor(np.flatnonzero(kept[i]))
        for r, k in enumerate(rows):
            z_imgs.append(it["children"][k])
            grids.append(emb[i, k][:, None, None])
            mags.append(SlideExtraction.MAG20)
            noise.append(it["noise20"][r])
        z_imgs.append(it["parent"])
        side = CHILDREN_PER_SIDE
        grids.append(emb[i, :CHILDREN].reshape(side, side, -1).permute(2, 0, 1))
        mags.append(SlideExtraction.MAG5)
        noise.append(it["noise5"])
    n = len(z_imgs)
    for i in range(0, n, bs):
        sl = slice(i, min(n, i + bs))
        ctx = models.contexts([g[None] for g in grids[sl]], mags[sl])
        models.zoomldm_features(
            torch.stack(z_imgs[sl]).to(ex.device), ctx, torch.stack(noise[sl]).to(ex.device)
        )
    synchronize(ex.device)
    return time.perf_counter() - t0, n


def efficiency(
    model: str,
    slide_path: Path,
    batch_size: int,
    workers: tuple[int, ...],
    min_tissue: float,
    repeats: int = 2,
) -> dict:
    """Models-only time vs end-to-end time with each worker count, best of ``repeats`` interleaved
    runs (on a shared machine the minimum is the least disturbed measurement), after a warm-up."""
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.pipeline import Extractor

    exs = {
        w: Extractor(
            ExtractConfig.from_kwargs(
                **settings(model, batch_size=batch_size, num_workers=w, **{"tissue.min_tissue": min_tissue})
            )
        )
        for w in workers
    }
    ex = exs[workers[0]]
    t_models, t_e2e, timings = float("inf"), dict.fromkeys(workers, float("inf")), {}
    cpu_models, cpu_e2e = float("inf"), dict.fromkeys(workers, float("inf"))
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models_only_seconds(ex, slide_path)  # warm-up (kernels, allocator, page cache)
        for _ in range(repeats):
            c0 = _cpu_seconds()
            dt, n = models_only_seconds(ex, slide_path)
            t_models, cpu_models = min(t_models, dt), min(cpu_models, _cpu_seconds() - c0)
            for w, e in exs.items():
                dest = Path(tempfile.mkdtemp(dir=out))  # a fresh directory: nothing to reuse
                c0, t0 = _cpu_seconds(), time.perf_counter()
                result = e.extract(slide_path, dest)
                dt = time.perf_counter() - t0
                cpu_e2e[w] = min(cpu_e2e[w], _cpu_seconds() - c0)
                if dt < t_e2e[w]:
                    t_e2e[w], timings[w] = dt, dict(e.timings)
    assert result.tiles == n, (result.tiles, n)
    row = {
        "model": model,
        "tiles": n,
        "tiles_20x": result.n20,
        "tiles_5x": result.n5,
        "uni_images": 17 * result.n5,
        "batch_size": batch_size,
        "repeats": repeats,
        "models_only_s": round(t_models, 2),
        "models_tiles_per_s": round(n / t_models, 3),
        "models_only_cpu_s": round(cpu_models, 2),
    }
    for w in workers:
        row[f"workers{w}"] = {
            "end_to_end_s": round(t_e2e[w], 2),
            "end_to_end_tiles_per_s": round(n / t_e2e[w], 3),
            "efficiency": round(t_models / t_e2e[w], 3),
            # CPU seconds (main process + reaped DataLoader workers): what the pipeline costs on
            # top of the model calls, insensitive to other processes taking the cores
            "end_to_end_cpu_s": round(cpu_e2e[w], 2),
            "cpu_efficiency": round(cpu_models / cpu_e2e[w], 3),
            "in_models_s": round(timings[w]["uni"] + timings[w]["zoomldm"], 2),
            # share of the end-to-end wall time spent inside model calls, within one run: unlike
            # the efficiency above it does not compare runs made at different moments of a shared machine
            "in_models_share": round((timings[w]["uni"] + timings[w]["zoomldm"]) / t_e2e[w], 3),
            "waiting_for_data_s": round(timings[w]["wait"], 2),
        }
    return row


# ----------------------------------------------------------------------------------------------- 2


def tap_gain(model_name: str, batch: int, repeats: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from zoomfeat.model import ZoomLDM

    model = ZoomLDM.load(None, config=model_name, allow_random_weights=True).eval()
    taps = ["middle_block", "output_blocks.4"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.latent_channels, model.latent_size, model.latent_size, generator=g)
    ctx = model.condition(torch.randn(batch, model.ssl_channels, generator=g), 0).detach()
    t = torch.full((batch,), 200, dtype=torch.long)

    def timed(fns, repeats):
        """Best time of each function over ``repeats`` interleaved rounds (after a warm-up)."""
        best = [float("inf")] * len(fns)
        with torch.inference_mode():
            for fn in fns:
                fn()
            for _ in range(repeats):
                for i, fn in enumerate(fns):
                    t0 = time.perf_counter()
                    fn()
                    best[i] = min(best[i], time.perf_counter() - t0)
        return best

    def flops(fn):
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / batch / 1e9

    full = lambda: model.eps(x, t, ctx)  # noqa: E731
    tapped = lambda: model.taps(x, t, ctx, taps)  # noqa: E731
    t_full, t_taps = timed([full, tapped], repeats)
    return {
        "model": model_name,
        "batch": batch,
        "full_unet_s_per_tile": round(t_full / batch, 4),
        "to_deepest_tap_s_per_tile": round(t_taps / batch, 4),
        "speedup": round(t_full / t_taps, 2),
        "full_unet_gflops": round(flops(full), 1),
        "to_deepest_tap_gflops": round(flops(tapped), 1),
    }


# ----------------------------------------------------------------------------------------------- 3


def _vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set of a process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(slide: str, batch_size: int, num_workers: int) -> None:
    """Run in a fresh process: one extraction, then print peak RSS (main, and main + workers) as JSON."""
    import threading

    import psutil

    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.pipeline import Extractor

    ex = Extractor(
        ExtractConfig.from_kwargs(
            **settings("tiny", batch_size=batch_size, num_workers=num_workers, **{"tissue.min_tissue": 0.25})
        )
    )
    after_load = _vm_hwm_mb()
    me, peak_total, done = psutil.Process(), [0.0], threading.Event()

    def sample() -> None:  # main + DataLoader workers, every 20 ms
        while not done.is_set():
            try:
                total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            peak_total[0] = max(peak_total[0], total / 2**20)
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        result = ex.extract(slide, out)
        dt = time.perf_counter() - t0
    done.set()
    thread.join()
    print(json.dumps({
        "tiles": result.tiles,
        "seconds": round(dt, 1),
        "num_workers": num_workers,
        "peak_rss_after_model_load_mb": round(after_load, 1),
        "peak_rss_main_mb": round(_vm_hwm_mb(), 1),
        "peak_rss_main_plus_workers_mb": round(peak_total[0], 1),
    }))  # fmt: skip


def rss(slides: list[Path], batch_size: int, num_workers: int) -> list[dict]:
    rows = []
    for s in slides:
        cmd = [
            sys.executable,
            __file__,
            "--rss-child",
            str(s),
            "--batch-size",
            str(batch_size),
            "--num-workers",
            str(num_workers),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            raise RuntimeError(proc.stderr)
        rows.append({"slide": s.name, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return rows


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-full", action="store_true", help="no full-size (zoomldm_brca + UNI) figures")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--num-workers",
        type=int,
        default=1,
        help="worker count compared with 0 (tiny) and used for the RSS runs",
    )
    ap.add_argument(
        "--size",
        type=int,
        default=2048,
        help="side of the synthetic slide in px at 0.5 um/px (the RSS run adds 2x the side)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--threads", type=int, help="torch threads (1 gives contention-proof CPU times on a shared machine)"
    )
    ap.add_argument("--only", default="efficiency,taps,rss", help="comma-separated parts to run")
    ap.add_argument(
        "--skip-full-efficiency", action="store_true", help="full-size models only for the tap figures"
    )
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.batch_size, args.num_workers)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    import shutil

    work = Path(tempfile.mkdtemp(prefix="zoomfeat_bench_"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    parts = set(args.only.split(","))
    report: dict = {"device": "cpu", "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    print(f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, slides in {work}", flush=True)

    small = make_slide(work / "bench.svs", args.size, seed=0)
    workers = (0, args.num_workers) if args.num_workers else (0,)

    def show(tag, r):
        for w in (k for k in workers if f"workers{k}" in r):
            e = r[f"workers{w}"]
            print(f"[1] {tag}: {r['tiles']} tiles (+{r['uni_images']} UNI images), models alone {r['models_only_s']} s "
                  f"({r['models_tiles_per_s']} tiles/s); end-to-end with {w} workers {e['end_to_end_s']} s "
                  f"({e['end_to_end_tiles_per_s']} tiles/s) -> efficiency {e['efficiency']} (CPU time: "
                  f"{r['models_only_cpu_s']} s vs {e['end_to_end_cpu_s']} s -> {e['cpu_efficiency']}); in model calls "
                  f"{e['in_models_s']} s ({100 * e['in_models_share']:.1f}% of the run), waiting for data "
                  f"{e['waiting_for_data_s']} s", flush=True)  # fmt: skip

    if "efficiency" in parts:
        r = efficiency("tiny", small, args.batch_size, workers, 0.25, repeats=3)
        report["efficiency_tiny"] = r
        show("tiny", r)
    if "efficiency" in parts and not (args.skip_full or args.skip_full_efficiency):
        few = make_slide(
            work / "few.svs", 1024, seed=1, tissue=0.1
        )  # 1 parent, 1 kept child: 17 UNI + 2 ZoomLDM tiles
        r = efficiency("zoomldm_brca", few, 8, (0,), 0.25, repeats=1)
        report["efficiency_full"] = r
        show("full", r)

    for name, batch in (
        (("tiny", 16),) + (() if args.skip_full else (("zoomldm_brca", 2),)) if "taps" in parts else ()
    ):
        r = tap_gain(name, batch, repeats=5 if name == "tiny" else 2)
        report[f"tap_gain_{name}"] = r
        print(f"[2] {name:8s}: full UNet {r['full_unet_s_per_tile']} s/tile ({r['full_unet_gflops']} GFLOPs), to output_blocks.4 "
              f"{r['to_deepest_tap_s_per_tile']} s/tile ({r['to_deepest_tap_gflops']} GFLOPs) -> {r['speedup']}x", flush=True)  # fmt: skip

    if "rss" not in parts:
        _finish(report, args)
        return
    big = make_slide(work / "bench4x.svs", 2 * args.size, seed=0)
    rows = rss([small, big], args.batch_size, args.num_workers)
    report["rss"] = rows
    for row in rows:
        print(f"[3] {row['slide']:12s}: {row['tiles']} tiles in {row['seconds']} s, peak RSS main {row['peak_rss_main_mb']} MB "
              f"(after model load {row['peak_rss_after_model_load_mb']} MB), main + {row['num_workers']} workers "
              f"{row['peak_rss_main_plus_workers_mb']} MB", flush=True)  # fmt: skip
    growth = rows[1]["peak_rss_main_mb"] / rows[0]["peak_rss_main_mb"] - 1
    growth_all = rows[1]["peak_rss_main_plus_workers_mb"] / rows[0]["peak_rss_main_plus_workers_mb"] - 1
    report["rss_growth_4x_area"] = {"main": round(growth, 3), "main_plus_workers": round(growth_all, 3)}
    print(f"[3] peak RSS growth for 4x the area ({rows[0]['tiles']} -> {rows[1]['tiles']} tiles): main {100 * growth:+.1f}%, "
          f"main + workers {100 * growth_all:+.1f}%", flush=True)  # fmt: skip
    _finish(report, args)


def _finish(report: dict, args) -> None:
    report["torch_threads"] = torch.get_num_threads()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
