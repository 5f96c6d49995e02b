"""zoomfeat's encoder-only job against TRIDENT's own extractor: same slide, same tiles, same weights.

    python benchmarks/trident_compare.py --trident-python /path/to/trident-venv/bin/python \\
        --trident-src /path/to/TRIDENT                     # a synthetic 6144 x 6144 px slide
    python benchmarks/trident_compare.py --slide zoomfeat/data/CMU-1-Small-Region.svs ...
    python benchmarks/trident_compare.py ... --repeats 3 --threads 1 --work /tmp/cmp

TRIDENT is installed from its source as a user would (``pip install -e TRIDENT`` in its own
virtual environment); this script only starts its command-line program, never imports it.
Without ``--trident-python`` and ``--trident-src`` it says so in one line and exits 0.

What is compared (the tiles, the weights and the thread settings are the same for both):

- the encoder: ``kaiko_vits16`` (ViT-S/16, timm ``vit_small_patch16_224``; TRIDENT's
  ``kaiko-vits16``), both built with ONE seeded random initialisation written here to
  ``{work}/weights/model.safetensors`` (timm layout; nothing is downloaded);
- zoomfeat: ``python -m zoomfeat.extract SLIDE zoomldm=false encoders=[kaiko_vits16]
  +encoder_checkpoints.kaiko_vits16=W trident_compat=true`` (``bags.sets=...`` when this zoomfeat
  has the key, see ``--sets``): opens the slide, finds tissue, builds the grid, reads the tiles,
  embeds them and writes its bags;
- TRIDENT: ``run_batch_of_slides.py --task feat --patch_encoder kaiko-vits16
  --patch_encoder_ckpt_path W --mag 20 --patch_size 256 --gpus -1`` on zoomfeat's own 20x coords
  file (``20x_256px_0px_overlap/patches/{slide}_patches.h5``, TRIDENT's layout), copied into
  TRIDENT's job directory once before the timed runs: TRIDENT gets the tiles for free, zoomfeat
  pays for its tissue detection and grid, so the ratio is on the conservative side;
  ``--trident-full`` adds TRIDENT's whole job (``--task all --segmenter otsu``, its own tissue
  and tiles) as a third command;
- the runs are interleaved A B A B ... after one warm-up of each; every run starts from empty
  outputs (each tool skips a slide whose outputs exist). Wall seconds, CPU seconds (user + sys of
  the process and its children, from ``os.wait4``) and peak RSS are per run; the ratio
  zoomfeat / TRIDENT is taken pair by pair and its median printed;
- tiles embedded: TRIDENT's is the row count of its features file; zoomfeat's is counted from
  its bags: one embedding per row of its 20x bag (the kept 20x tiles) and of its 5x bag (the kept
  5x parents, written when a 5x or fused set is requested; fused rows reuse both). An encoder
  family embeds nothing else (``zoomfeat.features.families.plan_work``: background children are
  embedded only for a ZoomLDM recipe's 5x conditioning grid);
- the 20x features: the coords sets of both files, and where they are equal the max abs
  difference of the features row by row (both fp32 on the CPU; they differ by the resize
  implementation, torchvision's PIL resize in TRIDENT and torch's antialiased bilinear in
  zoomfeat, and float32 summation order).

Thread settings: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` =
``--threads`` for both processes; TRIDENT's DataLoader workers are its default (0.75 x the CPU
count) unless ``--trident-max-workers`` is given; zoomfeat's ``num_workers=auto`` is 0 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ENCODER = "kaiko_vits16"  # zoomfeat's registry name
TRIDENT_ENCODER = "kaiko-vits16"  # TRIDENT's registry name of the same model
TIMM_MODEL = "vit_small_patch16_224"
COORDS_DIR = "20x_256px_0px_overlap"


@dataclass
class Run:
    """One finished process."""

    tool: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int
    log: Path
    tiles: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--trident-python", type=Path, default=None, help="python of a venv with TRIDENT installed"
    )
    ap.add_argument(
        "--trident-src", type=Path, default=None, help="TRIDENT's source (holds run_batch_of_slides.py)"
    )
    ap.add_argument("--slide", type=Path, default=None, help="a slide (default: a synthetic one, --size)")
    ap.add_argument(
        "--size", type=int, default=6144, help="side of the synthetic slide, level-0 px at 0.5 um/px"
    )
    ap.add_argument("--tissue", type=float, default=0.4, help="tissue fraction of the synthetic slide")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each tool (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=1, help="OMP/MKL/OpenBLAS threads of both processes")
    ap.add_argument("--batch-size", type=int, default=32, help="tiles per model call, both tools")
    ap.add_argument(
        "--trident-max-workers", type=int, default=None, help="TRIDENT --max_workers (default: its own)"
    )
    ap.add_argument(
        "--sets",
        default="auto",
        help="zoomfeat bags.sets value, e.g. '[20x]'; auto: [20x] when this zoomfeat has the key; none: not passed (every set)",
    )
    ap.add_argument(
        "--trident-full",
        action="store_true",
        help="also time TRIDENT's whole job (otsu tissue + coords + feat)",
    )
    ap.add_argument(
        "--zoomfeat-set",
        action="append",
        default=[],
        help="more zoomfeat settings KEY=VALUE, e.g. num_workers=1 (reader processes, as TRIDENT reads)",
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/trident_compare"), help="scratch directory")
    ap.add_argument("--json", type=Path, default=None, help="write the runs and the summary here")
    return ap.parse_args(argv)


def trident_missing(args: argparse.Namespace) -> str | None:
    """Why TRIDENT cannot be run (one line), or None."""
    if args.trident_python is None or args.trident_src is None:
        return (
            "TRIDENT not given: pass --trident-python (a venv's python with TRIDENT installed from its source) "
            "and --trident-src (its checkout, holding run_batch_of_slides.py); nothing measured"
        )
    if not (args.trident_python.is_file() and os.access(args.trident_python, os.X_OK)):
        return f"--trident-python {args.trident_python}: not an executable file; nothing measured"
    if not (args.trident_src / "run_batch_of_slides.py").is_file():
        return f"--trident-src {args.trident_src}: no run_batch_of_slides.py there; nothing measured"
    return None


def make_slide(args: argparse.Namespace) -> Path:
    """The slide, alone in ``{work}/slides`` (TRIDENT takes a directory of slides)."""
    slides = args.work / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    if args.slide is not None:
        dst = slides / args.slide.name
        if not dst.exists():
            dst.symlink_to(args.slide.resolve())
        return dst
    from zoomfeat.slide.synthetic import write_synthetic_slide

    dst = slides / f"synthetic_{args.size}.svs"
    if not dst.exists():
        write_synthetic_slide(
            dst, width=args.size, height=args.size, mpp=0.5, levels=3, seed=0, tissue_fraction=args.tissue
        )
    return dst


def make_weights(work: Path) -> Path:
    """One seeded random ViT-S/16 in timm layout, read by both tools."""
    path = work / "weights" / "model.safetensors"
    if path.exists():
        return path
    import timm
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model(TIMM_MODEL, pretrained=False, img_size=224, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def sets_value(args: argparse.Namespace) -> str | None:
    """The bags.sets value to pass, or None when this zoomfeat has no such key."""
    if args.sets == "none":
        return None
    if args.sets != "auto":
        return args.sets
    import dataclasses

    from zoomfeat.features.config import ExtractConfig

    bags = {f.name: f for f in dataclasses.fields(ExtractConfig)}.get("bags")
    if bags is None:
        return None
    bags_type = bags.default_factory() if callable(bags.default_factory) else bags.default
    return "[20x]" if hasattr(bags_type, "sets") else None


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"  # neither tool may reach a hub
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run(tool: str, cmd: list[str], *, env: dict[str, str], log: Path, cwd: Path) -> Run:
    """Start ``cmd``, wait for it with ``os.wait4`` (its own and its children's rusage)."""
    with log.open("w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(tool, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, proc.returncode, log)


def zoomfeat_cmd(
    slide: Path, out: Path, weights: Path, args: argparse.Namespace, sets: str | None
) -> list[str]:
    cmd = [
        sys.executable, "-m", "zoomfeat.extract", str(slide), f"out_dir={out}", "zoomldm=false",
        f"encoders=[{ENCODER}]", f"+encoder_checkpoints.{ENCODER}={weights}", "trident_compat=true",
        "progress=false", f"batch_size={args.batch_size}", "device=cpu",
    ]  # fmt: skip
    if sets is not None:
        cmd.append(f"bags.sets={sets}")
    return cmd + list(args.zoomfeat_set)


def trident_cmd(slides: Path, job: Path, weights: Path, args: argparse.Namespace, *, full: bool) -> list[str]:
    cmd = [
        str(args.trident_python), str(args.trident_src / "run_batch_of_slides.py"),
        "--task", "all" if full else "feat", "--wsi_dir", str(slides), "--job_dir", str(job),
        "--patch_encoder", TRIDENT_ENCODER, "--patch_encoder_ckpt_path", str(weights),
        "--mag", "20", "--patch_size", "256", "--gpus", "-1", "--batch_size", str(args.batch_size),
    ]  # fmt: skip
    if full:
        cmd += ["--segmenter", "otsu"]
    if args.trident_max_workers is not None:
        cmd += ["--max_workers", str(args.trident_max_workers)]
    return cmd


def zoomfeat_tiles(out: Path, slide_id: str) -> tuple[int, dict[str, int]]:
    """Tiles zoomfeat embedded, from the bags it wrote (see the module docstring)."""
    import h5py

    def rows(path: Path) -> int:
        with h5py.File(path, "r") as f:
            return int(f["features"].shape[0])

    f20 = out / COORDS_DIR / f"features_{ENCODER}_20x" / f"{slide_id}.h5"
    f5 = out / "5x_256px_0px_overlap" / f"features_{ENCODER}_5x" / f"{slide_id}.h5"
    n20 = rows(f20) if f20.exists() else 0
    n5 = rows(f5) if f5.exists() else 0
    return n20 + n5, {"rows_20x": n20, "rows_5x": n5}


def compare_features(zf_bag: Path, td_bag: Path) -> dict[str, object]:
    """Same tiles? And where they are, the max abs difference of the features."""
    import h5py
    import numpy as np

    with h5py.File(zf_bag, "r") as f:
        zc, zx = f["coords"][:], f["features"][:]
    with h5py.File(td_bag, "r") as f:
        tc, tx = f["coords"][:], f["features"][:]
    zset = {tuple(map(int, c)) for c in zc}
    tset = {tuple(map(int, c)) for c in tc}
    out: dict[str, object] = {
        "zoomfeat_rows": len(zc),
        "trident_rows": len(tc),
        "same_coords": zset == tset,
        "only_zoomfeat": len(zset - tset),
        "only_trident": len(tset - zset),
    }
    if zx.shape[1:] == tx.shape[1:]:
        index = {c: i for i, c in enumerate(map(tuple, tc.astype(int).tolist()))}
        common = [(i, index[c]) for i, c in enumerate(map(tuple, zc.astype(int).tolist())) if c in index]
        if common:
            zi, ti = (np.array(v) for v in zip(*common))
            diff = np.abs(zx[zi].astype(np.float64) - tx[ti].astype(np.float64))
            out["max_abs_diff"] = float(diff.max())
            out["feature_scale"] = float(np.abs(tx[ti]).max())
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = trident_missing(args)
    if why is not None:
        print(f"trident_compare: {why}")
        return 0
    args.trident_python = (
        args.trident_python.absolute()
    )  # a venv's python: keep its path, not the symlink target
    args.trident_src = args.trident_src.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    logs.mkdir(exist_ok=True)
    slide = make_slide(args)
    slide_id = slide.stem
    weights = make_weights(args.work)
    sets = sets_value(args)
    env = thread_env(args.threads)

    zf_out = args.work / "zoomfeat_out"
    td_job = args.work / "trident_job"
    td_full_job = args.work / "trident_full_job"
    td_feats = td_job / COORDS_DIR / f"features_{TRIDENT_ENCODER}"

    def run_zoomfeat(tag: str) -> Run:
        shutil.rmtree(zf_out, ignore_errors=True)
        r = run(
            "zoomfeat",
            zoomfeat_cmd(slide, zf_out, weights, args, sets),
            env=env,
            log=logs / f"zoomfeat_{tag}.log",
            cwd=REPO,
        )
        if r.returncode == 0:
            r.tiles, r.extra = zoomfeat_tiles(zf_out, slide_id)
        return r

    def run_trident(tag: str, *, full: bool = False) -> Run:
        job = td_full_job if full else td_job
        if full:  # TRIDENT's whole job: nothing of a previous run
            shutil.rmtree(job, ignore_errors=True)
            job.mkdir(parents=True)
        else:  # keep the coords, drop the features and TRIDENT's logs of them
            shutil.rmtree(td_feats, ignore_errors=True)
            for p in (job / COORDS_DIR).glob("_*feats*"):
                p.unlink()
        name = "trident_full" if full else "trident"
        r = run(
            name,
            trident_cmd(slide.parent, job, weights, args, full=full),
            env=env,
            log=logs / f"{name}_{tag}.log",
            cwd=job,
        )
        feats = job / COORDS_DIR / f"features_{TRIDENT_ENCODER}" / f"{slide_id}.h5"
        if r.returncode == 0 and feats.exists():
            import h5py

            with h5py.File(feats, "r") as f:
                r.tiles = int(f["features"].shape[0])
        return r

    print(
        f"slide {slide} | encoder {ENCODER} (timm {TIMM_MODEL}, seeded random, {weights}) | threads {args.threads} "
        f"| batch {args.batch_size} | bags.sets {sets or '(not passed: every set of the job)'} "
        f"| load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    # warm-up of zoomfeat: also writes the 20x coords TRIDENT is given
    warm = run_zoomfeat("warmup")
    if warm.returncode != 0:
        print(f"trident_compare: zoomfeat failed (exit {warm.returncode}), see {warm.log}")
        return 1
    patches = td_job / COORDS_DIR / "patches"
    patches.mkdir(parents=True, exist_ok=True)
    shutil.copy2(
        zf_out / COORDS_DIR / "patches" / f"{slide_id}_patches.h5", patches / f"{slide_id}_patches.h5"
    )
    warm_td = run_trident("warmup")
    if warm_td.returncode != 0 or warm_td.tiles == 0:
        print(f"trident_compare: TRIDENT failed (exit {warm_td.returncode}), see {warm_td.log}")
        return 1
    if args.trident_full:
        run_trident("warmup", full=True)

    runs: list[Run] = []
    pairs: list[tuple[Run, Run]] = []
    for i in range(args.repeats):
        a = run_zoomfeat(str(i))
        b = run_trident(str(i))
        runs += [a, b]
        pairs.append((a, b))
        if args.trident_full:
            runs.append(run_trident(str(i), full=True))
        for r in runs[-3 if args.trident_full else -2 :]:
            print(
                f"  run {i} {r.tool:12s} wall {r.wall_s:7.2f} s  cpu {r.cpu_s:7.2f} s  peak RSS {r.peak_rss_mb:6.0f} MB  "
                f"tiles {r.tiles:5d}  exit {r.returncode}  load {os.getloadavg()[0]:.2f}",
                flush=True,
            )

    if any(r.returncode != 0 for r in runs):
        print("trident_compare: a run failed; logs in", logs)
        return 1
    wall = [a.wall_s / b.wall_s for a, b in pairs]
    cpu = [a.cpu_s / b.cpu_s for a, b in pairs]
    per_tile = [(a.wall_s / max(a.tiles, 1)) / (b.wall_s / max(b.tiles, 1)) for a, b in pairs]
    feats = compare_features(
        zf_out / COORDS_DIR / f"features_{ENCODER}_20x" / f"{slide_id}.h5", td_feats / f"{slide_id}.h5"
    )
    summary = {
        "slide": str(slide),
        "threads": args.threads,
        "bags_sets": sets,
        "zoomfeat_tiles_embedded": pairs[0][0].tiles,
        "zoomfeat_bag_rows": pairs[0][0].extra,
        "trident_tiles_embedded": pairs[0][1].tiles,
        "ratio_wall_median": statistics.median(wall),
        "ratio_wall_pairs": wall,
        "ratio_cpu_median": statistics.median(cpu),
        "ratio_wall_per_tile_median": statistics.median(per_tile),
        "features_20x": feats,
    }
    print(
        f"zoomfeat / TRIDENT (median of {len(pairs)} interleaved pairs): wall {summary['ratio_wall_median']:.3f} "
        f"(pairs {', '.join(f'{w:.3f}' for w in wall)}), cpu {summary['ratio_cpu_median']:.3f}, "
        f"wall per embedded tile {summary['ratio_wall_per_tile_median']:.3f}"
    )
    print(
        f"tiles embedded: zoomfeat {pairs[0][0].tiles} (bag rows {pairs[0][0].extra}), TRIDENT {pairs[0][1].tiles}"
    )
    print(f"20x features: {json.dumps(feats)}")
    if args.json:
        args.json.write_text(
            json.dumps({"runs": [r.__dict__ | {"log": str(r.log)} for r in runs], **summary}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
