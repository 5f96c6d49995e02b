"""ZoomLDM training throughput (samples/s) for the tiny and full-size configs on this device.

Times the trainer's own optimiser step (``zoomfeat.training.objective.train_step``: summarizer +
UNet forward, eps-MSE, backward, AdamW, EMA update) on batches from real shards (written to a
temporary directory with random latents/grids of the right shapes, read through the training
DataLoader), after ``--warmup`` untimed steps. Also reports the data stream alone (shards ->
collated batches) so you can see the loader is not the bottleneck. Full size on CPU is slow
(~0.6 TFLOP per sample for forward + backward), hence its defaults: batch 1, 2 timed steps.

    python benchmarks/train_step.py                                   # tiny + full size, this device
    python benchmarks/train_step.py --configs tiny --tiny-batch 8 --steps 10
    python benchmarks/train_step.py --device cuda --full-batch 16 --precision bf16 --grad-ckpt
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_shards(path: Path, channels: int, tiles_per_mag: int = 64, mags=(0, 1, 2, 3, 4)) -> Path:
    from zoomfeat.training.shards import ShardWriter, grid_side

    rng = np.random.default_rng(0)
    writer = ShardWriter(path, ssl_channels=channels, config_hash="bench", pack_rows=0)
    with writer.slide("bench") as s:
        for m in mags:
            g = grid_side(m)
            n = tiles_per_mag
            s.append(
                m,
                rng.standard_normal((n, 3, 64, 64)).astype(np.float16),
                rng.standard_normal((n, channels, g, g)).astype(np.float16),
                np.zeros((n, 2), np.int64),
                tile_size_level0=256 * 2**m,
            )
    return path


def bench_config(
    name: str,
    batch: int,
    steps: int,
    warmup: int,
    device,
    precision: str,
    grad_ckpt: bool,
    workers: int,
    tmp: Path,
) -> dict:
    import torch

    from zoomfeat.model import ZoomLDM
    from zoomfeat.runtime.device import autocast, resolve_precision, synchronize
    from zoomfeat.training.config import TrainConfig
    from zoomfeat.training.dataset import MultiScaleDataset, StepBatchSampler, make_loader
    from zoomfeat.training.objective import setup_training, train_step
    from zoomfeat.training.shards import ShardIndex

    model = ZoomLDM.from_config(name, seed=0)
    prec = resolve_precision(precision, device, training=True)
    data = make_shards(tmp / name, model.ssl_channels)
    cfg = TrainConfig(
        data=str(data),
        out_dir=str(tmp / "out"),
        model=name,
        batch_size=batch,
        gradient_checkpointing=grad_ckpt,
        precision=prec,
    )
    parts = setup_training(model, cfg, device, prec)
    ds = MultiScaleDataset(ShardIndex.load(data), seed=0)
    total = warmup + steps
    loader = make_loader(
        ds, StepBatchSampler(batch, total), num_workers=workers, pin_memory=device.type == "cuda"
    )
    it = iter(loader)
    amp = autocast(device, prec)

    def sync():
        synchronize(device)

    for _ in range(warmup):
        float(train_step(parts, [next(it)], lr=2e-5, amp=amp))
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [float(train_step(parts, [next(it)], lr=2e-5, amp=amp)) for _ in range(steps)]
    sync()
    dt = time.perf_counter() - t0
    # the data stream alone: 32 batches of 32 after the first (worker start-up not counted)
    it2 = iter(make_loader(ds, StepBatchSampler(32, 33), num_workers=workers))
    next(it2)
    t1 = time.perf_counter()
    n = sum(len(b["t"]) for b in it2)
    data_sps = n / (time.perf_counter() - t1)
    n_params = sum(p.numel() for p in parts.params)
    out = {
        "config": name,
        "trainable_params_M": n_params / 1e6,
        "batch": batch,
        "steps": steps,
        "precision": prec,
        "grad_ckpt": grad_ckpt,
        "s_per_step": dt / steps,
        "samples_per_s": batch * steps / dt,
        "data_samples_per_s": data_sps,
        "loss": float(np.mean(losses)),
    }
    if device.type == "cuda":
        out["peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    del parts, model
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,zoomldm_brca")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    ap.add_argument("--tiny-batch", type=int, default=8)
    ap.add_argument("--full-batch", type=int, default=None, help="default: 1 on CPU, 8 on GPU")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps (default: tiny 10, full size 2 on CPU / 10 on GPU)",
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the UNet")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from zoomfeat.runtime.device import resolve_device

    device = resolve_device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    )
    print(f"device: {device} ({where}); torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            tiny = name == "tiny"
            batch = args.tiny_batch if tiny else (args.full_batch or (1 if device.type == "cpu" else 8))
            steps = args.steps or (10 if tiny or device.type == "cuda" else 2)
            r = bench_config(
                name,
                batch,
                steps,
                args.warmup,
                device,
                args.precision,
                args.grad_ckpt,
                args.workers,
                Path(tmp),
            )
            rows.append(r)
            print(
                f"{r['config']:>13}: {r['trainable_params_M']:7.1f} M trainable | batch {r['batch']:3d} | {r['precision']} | "
                f"{r['s_per_step']:8.3f} s/step | {r['samples_per_s']:8.2f} samples/s | data stream {r['data_samples_per_s']:8.0f} samples/s"
                + (f" | peak {r['peak_mem_GiB']:.1f} GiB" if "peak_mem_GiB" in r else ""),
                flush=True,
            )
    return None


if __name__ == "__main__":
    main()
