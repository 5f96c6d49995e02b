"""Cost over a cohort: many small slides in one process, the benchmark over their bags, one huge slide.

    python benchmarks/cohort.py extract --slides 500 --dir /tmp/cohort              # one process
    python benchmarks/cohort.py extract --slides 500 --dir /tmp/cohort --devices cpu,cpu
    python benchmarks/cohort.py bench --dir /tmp/cohort                              # MIL over the bags
    python benchmarks/cohort.py large --width 150000 --height 100000 --dir /tmp/large
    python benchmarks/cohort.py extract --slides 20 --dir /tmp/c20                  # a quick run

``extract`` writes ``--slides`` synthetic 20x slides (``--side`` px square, 0.5 um/px, one seed
each; written once into ``DIR/slides``) and extracts them with the tiny models (``encoder=tiny``;
``zoomldm=false`` unless ``--zoomldm``, since the tiny ZoomLDM costs ~1 s per tile on a shared
CPU and the point is the cost *outside* the models) into ``DIR/out_{mode}``. It prints:

- per-slide overhead outside the models: the slide's wall seconds (``SlideResult.seconds``) minus
  its model seconds (``SlideResult.timings``: every encoder and ZoomLDM forward call), and the
  run's wall seconds per slide minus model seconds per slide (planning, locks, logs included);
- with ``--side A,B`` (slides alternating between two sizes, so they differ in kept 5x
  parents): the overhead split by least squares into a fixed part per slide and a part per kept
  parent (reading, decoding and resampling its 1024 px region), wall and CPU;
- HDF5 opens per slide (every ``h5py.File`` opened in this process, attributed by file name;
  one-process mode only);
- resident memory against slides done: the RSS of this process (with ``--devices``: of this
  process and its workers together) after each slide, and the least-squares slope in MB per 100
  slides over the slides after the first ``--warmup`` (allocator and caches settling).

``bench`` writes a labels CSV for the extracted bags (``DIR/labels.csv``: slide id, case id,
a label that depends on the slide's tissue fraction, so the task is learnable) and runs
``python -m zoomfeat.bench task=custom`` on one feature set in a child process: the child's peak
RSS (``ru_maxrss`` of the children), its wall seconds per fold, and the bench's own estimate of the
memory the in-memory bags take (:func:`zoomfeat.mil.bagdir.memory_estimate`), next to
the RSS of a bench over ``--small`` bags (the fixed cost of torch and the code), so the bags' part
of the peak is the difference.

``bytes OUT`` prints the bytes per kept 20x tile of an extraction's output directory (every bag
and coords file), with the fused sets as files and without them (``derived``: they can be rebuilt
from the 20x bag, the 5x bag and ``parent_idx``), and the feature bytes alone.

``large`` writes (once) a ``--width x --height`` px pyramidal tiled BigTIFF (resolution tags,
0.25 um/px, levels at downsample 1, 4, 16, 64; tissue in a few rectangles, every other level-0
tile absent, which openslide shows as background; the lower levels complete) and times tissue detection + ``TileGrid.build``
(integer lattice, as extraction lays it) in a fresh process: wall seconds and peak RSS.

Every mode prints one JSON line at the end (the figures) after its table.
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
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIDE_PX = 1024  # at 0.5 um/px: one 5x parent of 4 x 4 20x tiles


# ----------------------------------------------------------------------------- slides
def write_cohort(slide_dir: Path, *, n: int, sides: list[int]) -> list[Path]:
    """``n`` synthetic 20x slides (0.5 um/px, 2 levels), seeds 0..n-1, tissue fraction 0.25..0.65;
    slide ``i`` is ``sides[i % len(sides)]`` px square."""
    from zoomfeat.slide.synthetic import write_synthetic_slide

    slide_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = slide_dir / f"c{i:05d}.svs"
        if not path.is_file():
            tmp = slide_dir / f".c{i:05d}.tmp.svs"
            side = sides[i % len(sides)]
            write_synthetic_slide(
                tmp, width=side, height=side, mpp=0.5, levels=2, seed=i, tissue_fraction=tissue_fraction(i)
            )
            os.replace(tmp, path)
        paths.append(path)
    return paths


def tissue_fraction(i: int) -> float:
    """Slide ``i``'s tissue fraction (the label of ``bench`` depends on it)."""
    return 0.25 + 0.4 * ((i * 7919) % 100) / 100


@contextmanager
def model_cpu_seconds() -> Iterator[list[float]]:
    """CPU seconds of this thread inside the model calls of the extraction (one-process mode):
    ``FeatureModels.embed`` (encoder preprocessing + forward), ``contexts``, ``encode_tiles`` and
    ``latent_features`` -- the calls the slides' ``timings`` time with the wall clock -- are
    wrapped here, in the benchmark process only, and their ``time.thread_time`` summed into
    ``[seconds]``. With ``OMP_NUM_THREADS=1`` torch runs them in the calling thread, so this is
    their CPU cost, which other jobs on a shared machine do not inflate as they do wall time."""
    from zoomfeat.features.models import FeatureModels

    total = [0.0]
    names = ("embed", "contexts", "encode_tiles", "latent_features")
    originals = {name: getattr(FeatureModels, name) for name in names if hasattr(FeatureModels, name)}

    def timed(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                total[0] += time.thread_time() - t

        return call

    for name, fn in originals.items():
        setattr(FeatureModels, name, timed(fn))
    try:
        yield total
    finally:
        for name, fn in originals.items():
            setattr(FeatureModels, name, fn)


def extract(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import psutil
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from _rss import slope_mb_per_100, tree_rss_mb
    from hdf5_opens import count_h5_opens, slide_of

    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.runner import extract_slides
    from zoomfeat.features.slide_extraction import SlideHooks, SlideResult
    from zoomfeat.slide.manifest import discover

    t0 = time.perf_counter()
    sides = [int(v) for v in str(args.side).split(",")]
    slide_dir = args.dir / ("slides" if sides == [SIDE_PX] else "slides_" + "_".join(map(str, sides)))
    write_cohort(slide_dir, n=args.slides, sides=sides)
    print(f"{args.slides} slides in {slide_dir} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    slides = discover([slide_dir])[: args.slides]
    mode = "devices" if args.devices else "one_process"
    out = args.out or args.dir / f"out_{mode}"
    kwargs: dict[str, Any] = {"model": "tiny", "encoder": "tiny", "progress": False, "num_workers": 0}
    kwargs["zoomldm"] = bool(args.zoomldm)
    kwargs.update(dict(kv.split("=", 1) for kv in args.set))
    if args.devices:
        kwargs["devices"] = args.devices.split(",")
    config = ExtractConfig.from_kwargs(**kwargs)
    me = psutil.Process()
    rss: list[float] = []
    results: list[SlideResult] = []

    # one process: each slide's CPU (this thread, from its start hook to its end hook) outside
    # the model calls (model_cpu_seconds)
    started: list[tuple[float, float]] = []
    slide_overhead_cpu: list[float] = []

    def start(_: Any) -> None:
        started.append((time.thread_time(), model_cpu[0]))

    def sample(result: SlideResult) -> None:
        results.append(result)
        if started and result.status == "done":
            t0, m0 = started.pop()
            slide_overhead_cpu.append((time.thread_time() - t0) - (model_cpu[0] - m0))
        started.clear()
        rss.append(tree_rss_mb(me))
        if len(results) % 50 == 0:
            print(f"  {len(results)} slides, RSS {rss[-1]:.0f} MB", file=sys.stderr)

    hooks = SlideHooks(on_slide_start=start, on_slide_end=sample)
    lines: list[str] = []

    def echo(msg: str) -> None:  # devices=: one line per slide, here
        lines.append(msg)
        if args.devices:
            rss.append(tree_rss_mb(me))
            if len(rss) % 50 == 0:
                print(f"  {len(rss)} slides, RSS {rss[-1]:.0f} MB", file=sys.stderr)

    rss0 = tree_rss_mb(me)
    cpu0 = os.times()
    t0 = time.perf_counter()
    with warnings.catch_warnings(), count_h5_opens() as opened, model_cpu_seconds() as model_cpu:
        warnings.simplefilter("ignore")
        summary = extract_slides(slides, out, config, echo=echo, hooks=hooks)
    wall = time.perf_counter() - t0
    cpu1 = os.times()  # the workers' CPU counts once they are joined (children_*)
    cpu = sum(cpu1[:4]) - sum(cpu0[:4])
    if not summary.ok:
        raise SystemExit(summary.report())
    results = results or list(summary.results)
    done = [r for r in summary.results if r.status == "done"]
    model = np.array([r.timings.get("uni", 0.0) + r.timings.get("zoomldm", 0.0) for r in done])
    seconds = np.array([r.seconds for r in done])
    overhead_ms = (seconds - model) * 1e3
    # overhead = fixed + per_parent x (kept 5x parents): least squares over the slides (they differ
    # in parents with --side A,B); the fixed part is what every slide costs whatever its tissue
    parents = np.array([r.n5 for r in done], dtype=float)
    fit = {}
    for key, values in (("wall", overhead_ms), ("cpu", np.array(slide_overhead_cpu) * 1e3)):
        if len(values) == len(parents) and len(set(parents.tolist())) > 1:
            per_parent, fixed = np.polyfit(parents, values, 1)
            fit[key] = {"fixed_ms": round(float(fixed), 1), "per_parent_ms": round(float(per_parent), 1)}
    opens = Counter(slide_of(p) for p in opened)
    per_slide_opens = [opens[s.slide_id] for s in slides]
    tiles = np.array([r.n20 for r in done])
    figures = {
        "mode": mode,
        "devices": args.devices or None,
        "slides": len(slides),
        "done": len(done),
        "kept_20x_tiles_mean": round(float(tiles.mean()), 1) if len(tiles) else 0,
        "kept_5x_parents_mean": round(float(parents.mean()), 2) if len(parents) else 0,
        # per-slide overhead split into a fixed part and a part per kept parent (--side A,B)
        "overhead_fit": fit or "one parent count: pass --side 1024,2048 for the fit",
        "wall_s": round(wall, 1),
        "model_ms_per_slide_median": round(float(np.median(model) * 1e3), 1) if len(done) else None,
        "overhead_ms_per_slide_median": round(float(np.median(overhead_ms)), 1) if len(done) else None,
        "overhead_ms_per_slide_p90": round(float(np.percentile(overhead_ms, 90)), 1) if len(done) else None,
        # the run's wall per slide minus model time per slide (planning, locks, the log included);
        # with devices= the workers run side by side: wall x workers per slide
        "run_overhead_ms_per_slide": round(
            (wall * (len(args.devices.split(",")) if args.devices else 1) - float(model.sum()))
            / len(slides)
            * 1e3,
            1,
        ),
        # CPU seconds (this process and its joined workers) per slide, and the part outside the
        # models estimated by the models' share of the slides' wall time: a figure that a machine
        # shared with other jobs inflates less than wall time
        "cpu_ms_per_slide": round(cpu / len(slides) * 1e3, 1),
        "overhead_cpu_ms_per_slide_est": round(
            cpu / len(slides) * 1e3 * (1 - float(model.sum()) / max(float(seconds.sum()), 1e-9)), 1
        ),
        # one process: the CPU of the model calls themselves (thread time, model_cpu_seconds), and
        # the run's CPU outside them per slide -- the overhead figure to compare between trees
        "model_cpu_ms_per_slide": None if args.devices else round(model_cpu[0] / len(slides) * 1e3, 1),
        "overhead_cpu_ms_per_slide": (
            None if args.devices else round((cpu - model_cpu[0]) / len(slides) * 1e3, 1)
        ),
        # the same per slide, from its start to its end hook (planning, imports and model
        # building before the first slide left out): the median over the slides
        "slide_overhead_cpu_ms_median": (
            round(float(np.median(slide_overhead_cpu)) * 1e3, 1) if slide_overhead_cpu else None
        ),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "hdf5_opens_per_slide": (
            round(float(np.mean(per_slide_opens)), 2)
            if not args.devices
            else "not counted (worker processes)"
        ),
        "rss_mb_start": round(rss0, 1),
        "rss_mb_first": round(rss[0], 1) if rss else None,
        "rss_mb_last": round(rss[-1], 1) if rss else None,
        "rss_mb_peak": round(max(rss), 1) if rss else None,
        "rss_slope_mb_per_100_slides": round(slope_mb_per_100(rss, args.warmup), 2),
        "warmup_slides": args.warmup,
        "out": str(out),
    }
    step = max(1, len(rss) // 10)
    print(f"{'slides done':>11} {'RSS MB':>8}")
    for k in range(0, len(rss), step):
        print(f"{k + 1:>11} {rss[k]:>8.1f}")
    print(f"{len(rss):>11} {rss[-1]:>8.1f}")
    (args.dir / f"rss_{mode}.json").write_text(
        json.dumps({"rss_mb": rss, "overhead_ms": overhead_ms.tolist()})
    )
    return figures


# ----------------------------------------------------------------------------- bench
def write_labels(bag_dir: Path, path: Path) -> int:
    """A labels CSV for the bags in ``bag_dir``: label 1 when the slide's tissue fraction is above the median."""
    import csv

    ids = sorted(p.stem for p in bag_dir.glob("*.h5") if not p.name.startswith("."))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "case_id", "label"])
        for sid in ids:
            w.writerow([sid, f"case_{sid}", int(tissue_fraction(int(sid[1:])) >= 0.45)])
    return len(ids)


def run_bench(job: Path, labels: Path, feature_set: str, out: Path, *, folds: int, extra: list[str]) -> dict:
    """``python -m zoomfeat.bench`` in a child process: wall seconds and peak RSS (MB)."""
    cmd = [
        sys.executable, "-m", "zoomfeat.bench", "task=custom", f"task.labels={labels}", f"task.bags={job}",
        f"feature_sets=[{feature_set}]", "baseline=null", f"cv.folds={folds}", f"out_dir={out}",
        "progress=false", "save_attention=false", "save_models=false", "bootstrap=0", "threads=1", *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (not the largest child so far)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    peak = usage.ru_maxrss / 1024
    if proc.returncode:
        raise SystemExit(f"bench failed ({' '.join(cmd)}):\n{text[-3000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak, 1), "tail": text.strip().splitlines()[-3:]}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    mode = "devices" if args.devices else "one_process"
    job = args.out or args.dir / f"out_{mode}"
    job20 = job / "20x_256px_0px_overlap"
    bag_dir = job20 / f"features_{args.feature_set}"
    if not bag_dir.is_dir():
        raise SystemExit(f"no bags at {bag_dir}: run `extract` first")
    labels = args.dir / "labels.csv"
    n = write_labels(bag_dir, labels)
    # the bench's own estimate of its in-memory bags (zoomfeat.mil.bagdir.memory_estimate, the one
    # it checks against the free RAM): the bags as data.dtype, the fold's float32 copy, per-bag overhead
    from zoomfeat.mil.bagdir import memory_estimate

    extra = list(args.bench_set)
    dtype = next((kv.split("=", 1)[1] for kv in extra if kv.startswith("data.dtype=")), "float16")
    files = sorted(p for p in bag_dir.glob("*.h5") if not p.name.startswith("."))
    file_bytes = sum(p.stat().st_size for p in files)
    estimate_mb = memory_estimate(files, dtype) / 2**20
    small_estimate_mb = memory_estimate(files[: args.small], dtype) / 2**20  # the labels' first rows
    # the fixed cost: the same bench over --small bags
    small_dir = args.dir / f"bench_small_{args.small}"
    small_labels = args.dir / f"labels_small_{args.small}.csv"
    import pandas as pd

    pd.read_csv(labels).head(args.small).to_csv(small_labels, index=False)
    small = run_bench(job, small_labels, args.feature_set, small_dir, folds=args.folds, extra=extra)
    big = run_bench(job, labels, args.feature_set, args.dir / "bench_all", folds=args.folds, extra=extra)
    return {
        "bags": n,
        "feature_set": args.feature_set,
        "folds": args.folds,
        "bag_file_mb": round(file_bytes / 2**20, 1),
        "bench_dtype": dtype,
        "bench_estimate_mb": round(estimate_mb, 1),
        f"bench_estimate_small_{args.small}_mb": round(small_estimate_mb, 1),
        f"small_{args.small}_bags": small,
        "all_bags": big,
        "seconds_per_fold": round(big["wall_s"] / args.folds, 1),
        "peak_rss_above_small_mb": round(big["peak_rss_mb"] - small["peak_rss_mb"], 1),
        "bench_estimate_above_small_mb": round(estimate_mb - small_estimate_mb, 1),
        "within_estimate": big["peak_rss_mb"] - small["peak_rss_mb"] <= max(estimate_mb, 1.0),
    }


# ----------------------------------------------------------------------------- bytes per tile
def bag_bytes(out: Path) -> dict[str, Any]:
    """Bytes per kept 20x tile of an extraction's ``out`` directory, fused sets as files and left
    out (``derived``: rebuilt from the 20x bag, the 5x bag and ``parent_idx``), in all and by set."""
    import h5py

    by_set: dict[str, int] = {}
    feature_bytes: dict[str, int] = {}
    patches = tiles = 0
    dtypes = set()
    for path in out.rglob("*.h5"):
        if path.name.startswith("."):
            continue
        size = path.stat().st_size
        if path.parent.name == "patches":
            patches += size
            continue
        name = path.parent.name.removeprefix("features_")
        by_set[name] = by_set.get(name, 0) + size
        with h5py.File(path) as f:
            feature_bytes[name] = feature_bytes.get(name, 0) + f["features"].id.get_storage_size()
            dtypes.add(str(f["features"].dtype))
            if path.parent.parent.name.startswith("20x") and name.endswith("_20x") and name.startswith("uni"):
                tiles += f["features"].shape[0]
    total = sum(by_set.values()) + patches
    fused = sum(v for k, v in by_set.items() if k.endswith("_fused"))
    return {
        "out": str(out),
        "dtypes": sorted(dtypes),
        "kept_20x_tiles": tiles,
        "bytes_per_tile_fused_file": round(total / tiles, 1),
        "bytes_per_tile_fused_derived": round((total - fused) / tiles, 1),
        "feature_bytes_per_tile_fused_file": round(sum(feature_bytes.values()) / tiles, 1),
        "feature_bytes_per_tile_fused_derived": round(
            sum(v for k, v in feature_bytes.items() if not k.endswith("_fused")) / tiles, 1
        ),
        "file_bytes_per_tile_by_set": {k: round(v / tiles, 1) for k, v in sorted(by_set.items())},
        "patches_bytes_per_tile": round(patches / tiles, 1),
    }


def bytes_cmd(args: argparse.Namespace) -> dict[str, Any]:
    return bag_bytes(args.out)


# ----------------------------------------------------------------------------- one large slide
def blobs(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Tissue rectangles ``(x0, y0, x1, y1)`` in level-0 px: four, about 2% of the slide."""
    out = []
    for fx, fy, fw, fh in (
        (0.2, 0.3, 0.08, 0.1),
        (0.55, 0.2, 0.06, 0.07),
        (0.7, 0.6, 0.1, 0.06),
        (0.3, 0.7, 0.04, 0.05),
    ):
        out.append((int(width * fx), int(height * fy), int(width * (fx + fw)), int(height * (fy + fh))))
    return out


def write_large(path: Path, *, width: int, height: int, tile: int = 256, mpp: float = 0.25) -> None:
    """A pyramidal tiled BigTIFF, 0.25 um/px in its tags, levels at downsample 1, 4, 16, 64: tissue tiles
    (pink with texture) inside :func:`blobs`, every other level-0 tile absent (zero byte count),
    the other levels' background tiles white."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    pink = np.empty((tile, tile, 3), np.uint8)
    noise = rng.integers(-12, 13, (tile, tile))
    for ch, v in enumerate((215, 140, 185)):
        pink[..., ch] = np.clip(v + noise, 0, 255)
    white = np.full((tile, tile, 3), 245, np.uint8)
    rects = blobs(width, height)
    tmp = path.with_name(path.name + ".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for k, down in enumerate((1, 4, 16, 64)):
            w, h = -(-width // down), -(-height // down)
            rows, cols = -(-h // tile), -(-w // tile)

            def tiles(down: int = down, rows: int = rows, cols: int = cols, k: int = k):  # noqa: ANN202
                for i in range(rows):
                    for j in range(cols):
                        cx, cy = (j + 0.5) * tile * down, (i + 0.5) * tile * down
                        inside = any(x0 <= cx < x1 and y0 <= cy < y1 for x0, y0, x1, y1 in rects)
                        # level 0: background tiles absent (zero byte count: transparent, read as
                        # background); the lower levels complete, as a scanner writes them
                        yield pink if inside else (white if k > 0 or i == j == 0 else None)

            # a generic tiled TIFF with the resolution in its tags (pixels per cm): openslide's Aperio
            # reader spends ~3 ms of CPU per absent level-0 tile on its first read (minutes here)
            ppcm = 1e4 / (mpp * down)
            tif.write(
                tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression="jpeg", resolution=(ppcm, ppcm), resolutionunit="CENTIMETER",
                subfiletype=0 if k == 0 else 1, metadata=None,
            )  # fmt: skip
    os.replace(tmp, path)


def large(args: argparse.Namespace) -> dict[str, Any]:
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"large_{args.width}x{args.height}_v3.tif"
    if not path.is_file():
        t0 = time.perf_counter()
        write_large(path, width=args.width, height=args.height)
        print(
            f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
    proc = subprocess.run(
        [sys.executable, __file__, "large-child", str(path)], stdout=subprocess.PIPE, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="extract a synthetic cohort in one process (or --devices)")
    b = sub.add_parser("bench", help="python -m zoomfeat.bench over the extracted bags")
    for p in (e, b):
        p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "zoomfeat_cohort")
        p.add_argument("--out", type=Path, default=None, help="extraction out_dir (default DIR/out_{mode})")
        p.add_argument("--devices", default="", help="e.g. cpu,cpu: one worker process per device")
    e.add_argument("--slides", type=int, default=500)
    e.add_argument(
        "--side",
        default=str(SIDE_PX),
        help="slide side in level-0 px (0.5 um/px); A,B: slides alternate (1024 = 1 parent, 2048 = up to 4)",
    )
    e.add_argument("--zoomldm", action="store_true", help="also the tiny ZoomLDM (default zoomldm=false)")
    e.add_argument("--warmup", type=int, default=20, help="slides left out of the RSS slope fit")
    e.add_argument("--set", action="append", default=[], help="more extraction options KEY=VALUE")
    b.add_argument("--feature-set", default="uni_20x")
    b.add_argument("--folds", type=int, default=5)
    b.add_argument("--small", type=int, default=40, help="bags of the fixed-cost run")
    b.add_argument("--bench-set", action="append", default=[], help="more bench overrides KEY=VALUE")
    g = sub.add_parser("large", help="tissue + grid on one huge pyramidal slide")
    g.add_argument("--width", type=int, default=150_000)
    g.add_argument("--height", type=int, default=100_000)
    g.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "zoomfeat_large")
    y = sub.add_parser(
        "bytes", help="bytes per kept 20x tile of an extraction out_dir (fused: file / derived)"
    )
    y.add_argument("out", type=Path)
    c = sub.add_parser("large-child", help=argparse.SUPPRESS)
    c.add_argument("path", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "large-child":
        from _rss import tissue_grid_figures

        print(json.dumps(tissue_grid_figures(args.path)))
        return 0
    figures = {"extract": extract, "bench": bench, "large": large, "bytes": bytes_cmd}[args.cmd](args)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
