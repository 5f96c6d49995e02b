"""float16 against float32 bags in one benchmark run, on the MIL data the repo ships (MUSK1, MUSK2).

    python benchmarks/bag_dtype.py --dir /tmp/bag_dtype               # both MUSK sets, 10 folds x 3 repeats
    python benchmarks/bag_dtype.py --dir /tmp/bag_dtype --task musk1 --repeats 1

Each bag of the instance CSV is written as a TRIDENT-layout HDF5 bag (``zoomfeat.bags.write_bag``)
four times, into four feature sets of one job directory:

- ``raw32`` / ``raw16``: the features as shipped, stored as float32 / float16. MUSK's features
  are integers in [-400, 400], which float16 holds exactly (11 significant bits), so these two
  must give identical results (a check of the pipeline, not of rounding);
- ``z32`` / ``z16``: the features standardised over all instances (mean 0, sd 1: the magnitude of
  foundation-model features), stored as float32 / float16: here float16 rounds every value
  (relative error <= 2^-11).

``python -m zoomfeat.bench`` then runs the task's own MIL settings (``task=musk1``/``musk2``) on
the four sets in one run (same folds, same seeds, ``data.dtype=float32`` so nothing is rounded in
memory), and this script prints, for each pair, the mean per-fold AUC difference (float16 minus
float32) with its paired 95% t interval over the (repeat, fold) cells, and the bytes of the
features per instance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_sets(task: str, job: Path) -> Path:
    """The four feature sets of ``task``'s bags under ``job``; returns the labels CSV."""
    import numpy as np
    import pandas as pd

    from zoomfeat.bags import bag_path, write_bag
    from zoomfeat.runtime.resources import package_data

    table = pd.read_csv(package_data("mil", f"{task}.csv"), header=None)
    labels, bags = table[0].to_numpy(), table[1].astype(str).to_numpy()
    x = table.iloc[:, 2:].to_numpy(np.float32)
    z = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    attrs = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40.0,
             "target_magnification": 20, "overlap": 0, "name": "musk", "level0_width": 1, "level0_height": 1}  # fmt: skip
    rows = []
    for bag in sorted(set(bags)):
        sel = bags == bag
        sid = f"{task}_{bag}".replace(" ", "_")
        coords = np.zeros((int(sel.sum()), 2), np.int64)
        for name, values, dtype in (("raw32", x, "float32"), ("raw16", x, "float16"),
                                    ("z32", z, "float32"), ("z16", z, "float16")):  # fmt: skip
            path = bag_path(job, f"{name}_20x", sid)
            if not path.is_file():
                write_bag(path, values[sel], coords, {**attrs, "name": sid}, dtype=dtype)
        rows.append({"slide_id": sid, "case_id": sid, "label": int(labels[sel][0])})
    out = job / "labels.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def paired_ci(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its 95% t interval."""
    from scipy import stats

    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def run(task: str, root: Path, *, folds: int, repeats: int, pairs: list[str]) -> dict:
    import pandas as pd

    job = root / task
    labels = write_sets(task, job)
    out = root / f"bench_{task}"
    sets = [f"{p}{bits}" for p in pairs for bits in ("32", "16")]
    cmd = [
        sys.executable, "-m", "zoomfeat.bench", f"task={task}", f"task.labels={labels}", f"task.bags={job}",
        f"feature_sets=[{','.join(s + '_20x' for s in sets)}]", f"baseline={sets[0]}_20x", f"cv.folds={folds}",
        f"cv.repeats={repeats}", "data.dtype=float32", f"out_dir={out}", "progress=false",
        "save_attention=false", "save_models=false", "bootstrap=0", "threads=1",
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        raise SystemExit(f"bench failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}")
    folds_csv = pd.read_csv(out / "folds.csv")
    key = [c for c in ("seed", "repeat", "fold") if c in folds_csv.columns]
    auc = folds_csv.pivot_table(index=key, columns="feature_set", values="auc")
    result: dict = {"task": task, "bench_s": round(time.perf_counter() - t0, 1), "cells": len(auc)}
    for name in sets:
        result[f"auc_{name}"] = round(float(auc[f"{name}_20x"].mean()), 4)
    for a, b in ((f"{p}16", f"{p}32") for p in pairs):
        diffs = (auc[f"{a}_20x"] - auc[f"{b}_20x"]).tolist()
        mean, lo, hi = paired_ci(diffs)
        result[f"auc_{a}_minus_{b}"] = {"mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)]}
    for name in sets:
        d = job / "20x_256px_0px_overlap" / f"features_{name}_20x"
        import h5py

        n = feat = 0
        for p in d.glob("*.h5"):
            with h5py.File(p) as f:
                n += f["features"].shape[0]
                feat += f["features"].id.get_storage_size()
        result[f"feature_bytes_per_instance_{name}"] = round(feat / n, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("bag_dtype_bench"))
    ap.add_argument("--task", choices=["musk1", "musk2", "both"], default="both")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--pairs", default="raw,z", help="raw (as shipped: exact in float16) and/or z (standardised)"
    )
    args = ap.parse_args(argv)
    for task in ("musk1", "musk2") if args.task == "both" else (args.task,):
        print(
            json.dumps(
                run(task, args.dir, folds=args.folds, repeats=args.repeats, pairs=args.pairs.split(","))
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
