"""Seconds per cross-validation fold of the MIL benchmark on synthetic WSI-sized bags.

Default workload (the issue's): 200 bags of 2,000 instances x 2,048 features, held in memory
as float16 (1.6 GB), the default ``conf/mil/abmil.yaml`` model, one fold of a 5-fold split
(128 train / 32 validation / 40 test bags). It times, on the chosen device:

* the fold set-up (training-fold instance statistics),
* training epochs (``--epochs`` of them, early stopping off so every epoch runs),
* the validation pass inside each epoch and the test pass with attention,

then prints seconds per epoch and seconds per fold for 10, 20 and 50 (the default maximum)
epochs. Bags carry a weak planted signal so the numbers come from real training.

    python benchmarks/mil_speed.py                       # CPU, default config
    python benchmarks/mil_speed.py --threads 2 --epochs 3 --no-amp
    python benchmarks/mil_speed.py --max-instances 512   # random 512 instances per training bag
    python benchmarks/mil_speed.py --full                # one whole fold with early stopping
    python benchmarks/mil_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_bags(n_bags: int, n_instances: int, dim: int, seed: int = 0):
    from zoomfeat.mil.bagset import BagSet

    rng = np.random.default_rng(seed)
    labels = np.arange(n_bags) % 2
    bags = []
    direction = rng.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    for y in labels:
        x = rng.standard_normal((n_instances, dim), dtype=np.float32)
        if y:
            k = n_instances // 20
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bags", type=int, default=200)
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=4, help="epochs to time (early stopping off)")
    ap.add_argument(
        "--full", action="store_true", help="one real fold: the config's epochs, early stopping on"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mil", default="abmil", help="conf/mil/NAME.yaml")
    ap.add_argument("--max-instances", type=int, default=None)
    ap.add_argument("--no-amp", action="store_true", help="float32 only (no bf16 autocast)")
    args = ap.parse_args(argv)

    import torch
    from hydra import compose, initialize_config_dir

    from zoomfeat.mil.config import MILConfig
    from zoomfeat.mil.splits import fold_parts, make_splits
    from zoomfeat.mil.train import BagFeeder, amp_precision, instance_stats, predict, train_fold
    from zoomfeat.runtime.config import load_config
    from zoomfeat.runtime.device import resolve_device
    from zoomfeat.runtime.resources import config_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        composed = compose("bench", overrides=[f"mil={args.mil}"])
    cfg = load_config(MILConfig, composed.mil, f"conf/mil/{args.mil}.yaml")
    if not args.full:
        cfg.epochs, cfg.patience, cfg.min_epochs = args.epochs, args.epochs, args.epochs
    cfg.max_instances = args.max_instances
    cfg.amp = cfg.amp and not args.no_amp
    device = resolve_device(args.device)

    import torchmil.models  # noqa: F401  (import time is not fold time)

    t0 = time.perf_counter()
    bags = make_bags(args.bags, args.instances, args.dim)
    print(
        f"bags: {args.bags} x {args.instances} x {args.dim} float16 = {bags.nbytes / 2**30:.2f} GiB, made in {time.perf_counter() - t0:.1f}s"
    )
    splits = make_splits(bags.slide_ids, bags.case_ids, bags.labels, folds=args.folds, seed=0)
    parts = fold_parts(splits, 0, 0)
    tr, va, te = (bags.index(parts[p]) for p in ("train", "val", "test"))
    print(
        f"fold 0: {len(tr)} train / {len(va)} val / {len(te)} test bags; device {device}, threads {torch.get_num_threads()}, "
        f"autocast {amp_precision(device, cfg.amp)}; model hidden {list(cfg.hidden)}, att_dim {cfg.att_dim}, "
        f"max_instances {cfg.max_instances}"
    )

    t = time.perf_counter()
    instance_stats(bags, tr)
    stats_s = time.perf_counter() - t
    t = time.perf_counter()
    result = train_fold(bags, tr, va, cfg, seed=0, device=device, progress=False)
    train_s = time.perf_counter() - t - stats_s  # train_fold recomputes the statistics
    t = time.perf_counter()
    probs, atts = predict(result.model, BagFeeder(bags, device), te, attention=True, amp=cfg.amp)
    test_s = time.perf_counter() - t
    epochs = len(result.history)
    times = [h["seconds"] for h in result.history]
    per_epoch = float(
        np.median(times[1:] if len(times) > 1 else times)
    )  # the first epoch includes kernel warm-up
    from zoomfeat.mil.metrics import binary_metrics

    auc = binary_metrics(bags.labels[te], probs)["auc"]
    print(
        f"statistics {stats_s:.1f}s; {epochs} epochs in {train_s:.1f}s ({', '.join(f'{t:.1f}' for t in times)}); "
        f"{per_epoch:.1f}s/epoch (train + validation, median after the first); test with attention {test_s:.1f}s; test AUC {auc:.3f}"
    )
    fixed = stats_s + test_s + max(0.0, train_s - sum(times))  # statistics, model set-up, test
    figures = {n: fixed + n * per_epoch for n in (10, 20, 50)}
    if args.full:
        print(
            f"seconds per fold (early stopping, best epoch {result.best_epoch}, {epochs} epochs run): {stats_s + train_s + test_s:.0f}s"
        )
    else:
        print("seconds per fold: " + ", ".join(f"{n} epochs {s:.0f}s" for n, s in figures.items()))
    print(f"cpu: {os.cpu_count()} logical cores visible")
    return {"per_epoch": per_epoch, "fixed": fixed, "figures": figures}


if __name__ == "__main__":
    main()
