"""Speed of the MIL benchmark's training loop: per-bag-step overhead, an aggregator x seed x fold
grid, and one fold per aggregator on WSI-sized bags.

Three modes (synthetic bags with a weak planted signal, so the numbers come from real training):

``--mode tiny`` -- the per-step overhead: 60 bags x 30 instances x 16 features (the model's
arithmetic is negligible, so this is the loop's own cost), ABMIL, 20 epochs with early stopping
off; prints milliseconds per bag step (fold seconds / (epochs x training bags), validation
included). ``--code DIR`` imports zoomfeat from DIR instead of this checkout, to time another
version on the same machine (e.g. ``git archive COMMIT zoomfeat | tar -x -C /tmp/old``).
``--compare DIR`` runs tiny mode for DIR and for this checkout in alternating processes
(``--rounds`` each, ``--repeats`` folds per process) and prints the medians and their ratio, wall
and CPU (``process_time``) milliseconds per bag step: before/after on one machine in one run.
``--batch-size 8`` trains 8 bags per step (stacked when of one size, padded and masked otherwise).

``--mode grid`` -- every aggregator (``--aggregators``, default all 7 of conf/mil/) x ``--seeds``
x ``--folds`` folds on ``--bags`` small bags (default 200 x 30 x 16), each aggregator with its
conf/mil/NAME.yaml defaults, ``--epochs`` epochs per fold (early stopping off); prints the time
per aggregator and the total.

``--mode fold`` (default) -- one fold per aggregator on ``--bags`` x ``--instances`` x ``--dim``
float16 bags (the issue's size: 200 x 2,000 x 1,536; 1.2 GB), ``--epochs`` epochs each: the
fold set-up (training-fold statistics), seconds per epoch (training + validation), the test pass
with instance scores, and the projected seconds per fold for 10, 20 and 50 epochs.

    python benchmarks/mil_speed.py --mode tiny --threads 1
    python benchmarks/mil_speed.py --mode tiny --threads 1 --code /tmp/old   # another version
    python benchmarks/mil_speed.py --mode tiny --threads 1 --compare /tmp/old --rounds 5   # before/after
    python benchmarks/mil_speed.py --mode grid --threads 1
    python benchmarks/mil_speed.py --mode fold --aggregators abmil,transmil --instances 2000 --dim 1536
    python benchmarks/mil_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ALL = ["abmil", "gated_abmil", "clam_sb", "transmil", "dsmil", "meanpool", "maxpool"]


def make_bags(n_bags: int, n_instances: int, dim: int, seed: int = 0) -> Any:
    """``n_bags`` float16 bags of ``n_instances`` x ``dim``: class 1 has 5% of its instances shifted
    by 1.5 along one random direction."""
    from zoomfeat.mil.bagset import BagSet

    rng = np.random.default_rng(seed)
    labels = np.arange(n_bags) % 2
    bags = []
    direction = rng.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    for y in labels:
        x = rng.standard_normal((n_instances, dim), dtype=np.float32)
        if y:
            k = max(1, n_instances // 20)
            x[:k] += 1.5 * direction  # 5% of the instances carry a weak signal
        bags.append(x.astype(np.float16))
    ids = [f"bag{i:04d}" for i in range(n_bags)]
    return BagSet(
        feature_set="synthetic",
        source=Path("memory"),
        slide_ids=ids,
        case_ids=ids,
        labels=labels.astype(np.int64),
        dim=dim,
        n_instances=np.full(n_bags, n_instances),
        bags=bags,
        coords=[None] * n_bags,
    )


def mil_config(name: str) -> Any:
    """conf/mil/NAME.yaml as a MILConfig."""
    from hydra import compose, initialize_config_dir

    from zoomfeat.mil.config import MILConfig
    from zoomfeat.runtime.config import load_config
    from zoomfeat.runtime.resources import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        composed = compose("bench", overrides=[f"mil={name}"])
    return load_config(MILConfig, composed.mil, f"conf/mil/{name}.yaml")


def fixed_epochs(cfg: Any, epochs: int, batch_size: int | None = None, amp: bool | None = None) -> Any:
    cfg.epochs, cfg.patience, cfg.min_epochs, cfg.warmup = epochs, epochs, epochs, 0
    if batch_size:
        cfg.batch_size = batch_size
    if amp is not None:
        cfg.amp = cfg.amp and amp
    return cfg


def tiny(args: argparse.Namespace) -> dict[str, float]:
    """Per bag step on 60 x 30 x 16 bags (module docstring)."""
    from zoomfeat.mil.config import MILConfig
    from zoomfeat.mil.train import train_fold

    bags = make_bags(60, 30, 16)
    idx = np.arange(60)
    tr, va = idx[:40], idx[40:50]
    cfg = MILConfig(hidden=[32], att_dim=16, epochs=20, patience=100, min_epochs=20, warmup=0, amp=False,
                    batch_size=args.batch_size or 1)  # fmt: skip
    train_fold(bags, tr, va, cfg, seed=0, device=args.device, progress=False)  # warm-up (imports, kernels)
    walls, cpus = [], []
    for rep in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        train_fold(bags, tr, va, cfg, seed=rep, device=args.device, progress=False)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    steps = cfg.epochs * len(tr)
    out = {
        "ms_per_bag_step": 1e3 * float(np.median(walls)) / steps,
        "cpu_ms_per_bag_step": 1e3 * float(np.median(cpus)) / steps,
        "best_ms_per_bag_step": 1e3 * min(walls) / steps,
        "fold_s": float(np.median(walls)),
    }
    import zoomfeat

    print(
        f"tiny bags 60 x 30 x 16, ABMIL, {cfg.epochs} epochs x {len(tr)} training + {len(va)} validation bags, "
        f"batch_size {cfg.batch_size}, zoomfeat from {Path(zoomfeat.__file__).parent}: "
        f"{out['ms_per_bag_step']:.3f} ms per bag step wall, {out['cpu_ms_per_bag_step']:.3f} ms CPU "
        f"(median of {args.repeats} folds; best {out['best_ms_per_bag_step']:.3f} ms wall)",
        flush=True,
    )
    print("RESULT " + json.dumps(out), flush=True)
    return out


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Tiny mode for this checkout and ``--compare DIR`` in alternating processes, ``--rounds``
    times each: the medians over rounds and their ratio (DIR / this), wall and CPU."""
    import subprocess

    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for which, code in (("old", args.compare), ("new", str(Path(__file__).resolve().parent.parent))):
            cmd = [sys.executable, __file__, "--mode", "tiny", "--code", code, "--repeats", str(args.repeats)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.batch_size:
                cmd += ["--batch-size", str(args.batch_size)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            print(
                "  " + next(ln for ln in proc.stdout.splitlines() if ln.startswith("tiny bags")), flush=True
            )
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            runs[which].append(json.loads(line[len("RESULT ") :]))
    out: dict[str, Any] = {}
    for key in ("ms_per_bag_step", "cpu_ms_per_bag_step"):
        old, new = (float(np.median([r[key] for r in runs[w]])) for w in ("old", "new"))
        out[key] = {"old": old, "new": new, "ratio": old / new}
        print(
            f"{key}: {args.compare} {old:.3f} ms, this checkout {new:.3f} ms, ratio {old / new:.2f} "
            f"(medians of {args.rounds} alternating processes x {args.repeats} folds each)",
            flush=True,
        )
    return out


def grid(args: argparse.Namespace) -> dict[str, float]:
    """Aggregators x seeds x folds on small bags (module docstring)."""
    import torch

    from zoomfeat.mil.feeding import BagFeeder, predict_logits
    from zoomfeat.mil.fold_loop import fold_seed
    from zoomfeat.mil.splits import fold_parts, make_splits
    from zoomfeat.mil.train import train_fold

    bags = make_bags(args.bags, args.instances, args.dim)
    splits = make_splits(bags.slide_ids, bags.case_ids, bags.labels, folds=args.folds, seed=0)
    feeder = BagFeeder(bags, torch.device(args.device))
    per_agg: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    for name in args.aggregators.split(","):
        cfg = fixed_epochs(mil_config(name), args.epochs, args.batch_size, amp=not args.no_amp)
        t, c = time.perf_counter(), time.process_time()
        for seed in range(args.seeds):
            for fold in range(args.folds):
                parts = fold_parts(splits, 0, fold)
                tr, va, te = (bags.index(parts[p]) for p in ("train", "val", "test"))
                result = train_fold(bags, tr, va, cfg, seed=fold_seed(seed, 0, fold), device=args.device,
                                    progress=False)  # fmt: skip
                predict_logits(result.model, feeder, te, attention=True, amp=cfg.amp)
        per_agg[name] = time.perf_counter() - t
        print(
            f"  {name}: {per_agg[name]:.1f}s wall, {time.process_time() - c:.1f}s CPU for {args.seeds} seeds x "
            f"{args.folds} folds",
            flush=True,
        )
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(
        f"grid: {len(per_agg)} aggregators x {args.seeds} seeds x {args.folds} folds on {args.bags} bags of "
        f"{args.instances} x {args.dim}, {args.epochs} epochs each, batch_size {args.batch_size or 'yaml'}: "
        f"{total:.1f}s wall, {cpu:.1f}s CPU in all"
    )
    return {"total_s": total, "cpu_s": cpu, **per_agg}


def fold(args: argparse.Namespace) -> dict[str, Any]:
    """One fold per aggregator on WSI-sized bags (module docstring)."""
    import torch

    from zoomfeat.mil.abmil import instance_stats
    from zoomfeat.mil.feeding import BagFeeder, amp_precision, predict_logits
    from zoomfeat.mil.splits import fold_parts, make_splits
    from zoomfeat.mil.train import train_fold
    from zoomfeat.runtime.device import resolve_device

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    bags = make_bags(args.bags, args.instances, args.dim)
    print(
        f"bags: {args.bags} x {args.instances} x {args.dim} float16 = {bags.nbytes / 2**30:.2f} GiB, "
        f"made in {time.perf_counter() - t0:.1f}s; device {device}, threads {torch.get_num_threads()}"
    )
    splits = make_splits(bags.slide_ids, bags.case_ids, bags.labels, folds=args.folds, seed=0)
    parts = fold_parts(splits, 0, 0)
    tr, va, te = (bags.index(parts[p]) for p in ("train", "val", "test"))
    t = time.perf_counter()
    instance_stats(bags, tr)
    stats_s = time.perf_counter() - t
    out: dict[str, Any] = {}
    for name in args.aggregators.split(","):
        cfg = fixed_epochs(mil_config(name), args.epochs, args.batch_size, amp=not args.no_amp)
        cfg.max_instances = args.max_instances
        t, c = time.perf_counter(), time.process_time()
        result = train_fold(bags, tr, va, cfg, seed=0, device=device, progress=False)
        train_s = time.perf_counter() - t - stats_s  # train_fold recomputes the statistics
        t = time.perf_counter()
        predict_logits(result.model, BagFeeder(bags, device), te, attention=True, amp=cfg.amp)
        test_s = time.perf_counter() - t
        cpu_s = time.process_time() - c  # training + test, CPU seconds of this process
        times = [h["seconds"] for h in result.history]
        per_epoch = float(np.median(times[1:] if len(times) > 1 else times))  # the first has warm-up
        fixed = stats_s + test_s + max(0.0, train_s - sum(times))
        figures = {n: fixed + n * per_epoch for n in (10, 20, 50)}
        out[name] = {"per_epoch": per_epoch, "fixed": fixed, "figures": figures, "cpu_s": cpu_s}
        print(
            f"  {name}: {per_epoch:.1f}s/epoch ({len(tr)} train + {len(va)} val bags, autocast "
            f"{amp_precision(device, cfg.amp)}), statistics {stats_s:.1f}s, test with scores {test_s:.1f}s; "
            "seconds per fold: "
            + ", ".join(f"{n} epochs {s:.0f}s" for n, s in figures.items())
            + f"; {cpu_s:.0f} CPU-s for the {args.epochs} epochs and the test",
            flush=True,
        )
    print(f"cpu: {os.cpu_count()} logical cores visible")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--mode", choices=("tiny", "grid", "fold"), default="fold")
    ap.add_argument("--code", default=None, help="import zoomfeat from this directory (another version)")
    ap.add_argument("--bags", type=int, default=None, help="default: 200")
    ap.add_argument("--instances", type=int, default=None, help="default: 30 (grid), 2000 (fold)")
    ap.add_argument("--dim", type=int, default=None, help="default: 16 (grid), 1536 (fold)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="grid: seeds per fold")
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs per fold (early stopping off); default 10 (grid), 3 (fold)",
    )
    ap.add_argument("--aggregators", default=",".join(ALL), help="comma-separated conf/mil/ names")
    ap.add_argument("--batch-size", type=int, default=None, help="bags per step (default: the YAML's)")
    ap.add_argument("--repeats", type=int, default=3, help="tiny: timed folds per process (median printed)")
    ap.add_argument(
        "--compare", default=None, help="tiny: also time the zoomfeat in this directory (old version)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="--compare: alternating processes per version")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-instances", type=int, default=None)
    ap.add_argument("--no-amp", action="store_true", help="float32 only (no bf16 autocast)")
    args = ap.parse_args(argv)
    if args.mode == "tiny" and args.compare:
        return compare(args)
    sys.path.insert(
        0, str(Path(args.code).resolve()) if args.code else str(Path(__file__).resolve().parent.parent)
    )

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import torchmil.models  # noqa: F401  (import time is not training time)

    if args.mode == "tiny":
        return tiny(args)
    small = args.mode == "grid"
    args.bags = args.bags or 200
    args.instances = args.instances or (30 if small else 2000)
    args.dim = args.dim or (16 if small else 1536)
    args.epochs = args.epochs or (10 if small else 3)
    return grid(args) if small else fold(args)


if __name__ == "__main__":
    main()
