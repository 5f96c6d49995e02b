"""The cost of a second run that adds 3 recipes, with the tile store against without it (issue 20).

    python benchmarks/store_cost.py                  # full size on 2 tiles (CPU: minutes) + tiny over the demo
    python benchmarks/store_cost.py --skip-full      # the tiny models over the demo slide only
    python benchmarks/store_cost.py --tiles 2 --repeats 2 --threads 1 --json out.json
    python benchmarks/store_cost.py --fill           # a store given afterwards to complete bags

Two levels, each measured in one run, interleaved (a change of machine load hits both), best of
``--repeats``:

- *models, full size* (``zoomldm_brca`` + UNI with random weights, as ``recipes_cost.py`` builds
  them; ``--tiles`` 20x tiles, each conditioned on its own 1x1 UNI grid as in extraction). Without
  the store the second run computes, for its 3 recipes: UNI (the conditioning), the Summarizer, the
  VQ encoding and the UNet. With the store it reads the tiles' latents and UNI embeddings from a
  real store entry (:class:`zoomfeat.tilestore.StoreWriter` / ``StoreReader``, written by the first
  run) and computes the Summarizer and the UNet only. FLOPs per tile (``torch.utils.flop_counter``)
  and seconds; the features of both must be equal (printed: max |difference|).
- *pipeline, tiny models over the demo slide* (``zoomfeat/data/CMU-1-Small-Region.svs``): a first
  run with the default recipe and ``store=DIR``, then the second run adding the 3 recipes to a copy
  of its ``out_dir``, with ``store=DIR`` against without (slide reading, tissue, DataLoader,
  writing bags included); wall and CPU seconds of the process.

``--fill`` measures instead what giving a store afterwards costs (tiny models, demo slide, in one
run, interleaved, best of ``--repeats``): a first run without the store, a first run with it, and
``store=DIR`` over a copy of the first run's complete ``out_dir`` (the plan's ``fill``: the entry
only). It checks that the fill leaves every bag byte-equal with its mtime, and that its entry's
latents and embeddings equal the first run's with the store bit for bit.

Two sets of 3 recipes (``--recipes``): ``one-timestep`` (other taps and poolings at t = 200: one
UNet forward per tile serves all three) and ``three-timesteps`` (t = 50, 500, 800: three UNet
forwards per tile). With the store, a run costs its UNet forwards; without it, also the VQ
encoding and UNI, so the ratio is ``k U / (k U + VQ + UNI)`` for k forwards.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from recipes_cost import build, count_flops  # noqa: E402  (the same model set-up and FLOP count)

#: the second run's 3 recipes (features.recipes entries)
RECIPE_SETS = {
    "one-timestep": [
        {"name": "out2", "taps": ["output_blocks.2"]},
        {"name": "midmax", "taps": ["middle_block"], "pooling": "max"},
        {"name": "meanmax", "pooling": "meanmax"},
    ],
    "three-timesteps": [
        {"name": "t50", "timestep": 50},
        {"name": "t500", "timestep": 500},
        {"name": "t800", "timestep": 800},
    ],
}


def recipes_of(name: str) -> list:
    from zoomfeat.features.config import ExtractConfig

    return ExtractConfig.from_kwargs(**{"features.recipes": RECIPE_SETS[name]}).recipes()[1:]


def write_entry(store: Path, models, tiles: torch.Tensor) -> None:
    """The first run's store entry for ``tiles``: one parent whose first n children are the tiles
    (the other rows of the embeddings are zeros: a 20x tile is conditioned on its own embedding)."""
    from zoomfeat.tilestore import StoreWriter

    n, job = len(tiles), models.cond_job(224)
    kept = np.zeros(16, bool)
    kept[:n] = True
    dim = models.job_dim(job)
    grid = {
        "parents": np.zeros((1, 2), np.int64),
        "children_xy": np.stack([np.arange(16) % 4, np.arange(16) // 4], 1) * 512,
        "children_kept": kept,
        "children_tissue": kept.astype(np.float32),
        "coords_attrs": {"child": {}, "parent": {}},
        "tile_size_level0": {0: 512, 2: 2048},
    }
    key = {"jobs": {job: {"dim": dim}}, "tile_px": 256, "grid_hash": "", "vq": "", "precision": "fp32"}
    w = StoreWriter(store, "bench", key=key, grid=grid, latent_shape=tuple(models.latent_shape))
    emb = np.zeros((17, dim), np.float32)
    emb[:n] = models.embed(tiles, job).cpu().numpy()
    w.add_parent(
        0,
        emb={job: emb},
        z20=models.encode_tiles(tiles).cpu().numpy(),
        z5=np.zeros(models.latent_shape, np.float32),
    )
    w.finish()


def model_level(model: str, recipe_set: str, n_tiles: int, repeats: int, device: torch.device) -> dict:
    """Seconds and FLOPs of the second run's 3 recipes on ``n_tiles`` 20x tiles, store vs none."""
    from zoomfeat.tilestore import StoreReader, inspect_entry

    models = build(model, device, recipes_of(recipe_set))
    job = models.cond_job(224)
    g = torch.Generator().manual_seed(0)
    px = models.cfg.tile_px
    tiles = (torch.rand(n_tiles, px, px, 3, generator=g) * 255).to(torch.uint8).to(device)
    noise = torch.randn(n_tiles, models.max_draws, *models.latent_shape, generator=g).to(device)

    def without() -> dict:  # from the pixels: UNI, Summarizer, VQ, UNet
        emb = models.embed(tiles, job)
        ctx = models.contexts([emb[:, :, None, None]], [0])
        return models.zoomldm_features(tiles, {224: ctx}, noise)

    with tempfile.TemporaryDirectory() as tmp:
        write_entry(Path(tmp), models, tiles)
        entry = inspect_entry(tmp, "bench")

        def with_store() -> dict:  # from the store: read, Summarizer, UNet
            reader = StoreReader(entry)
            got = reader.parent(0, jobs=[job], latents=True)
            reader.close()
            emb = torch.from_numpy(got["emb"][job][:n_tiles]).to(device)
            ctx = models.contexts([emb[:, :, None, None]], [0])
            return models.latent_features(torch.from_numpy(got["z20"]).to(device), {224: ctx}, noise)

        flops = {"none": count_flops(without) / n_tiles, "store": count_flops(with_store) / n_tiles}
        best = {"none": float("inf"), "store": float("inf")}
        cpu = {"none": float("inf"), "store": float("inf")}
        a: dict[str, Any] = {}
        b: dict[str, Any] = {}
        for _ in range(repeats):
            for name, fn in (("none", without), ("store", with_store)):
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                out = fn()
                dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
                best[name] = min(best[name], dt)
                cpu[name] = min(cpu[name], (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime))
                a, b = (out, b) if name == "none" else (a, out)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    return {
        "level": f"models {model}",
        "recipes": recipe_set,
        "tiles": n_tiles,
        "gflop_per_tile_none": flops["none"] / 1e9,
        "gflop_per_tile_store": flops["store"] / 1e9,
        "flop_ratio": flops["store"] / flops["none"],
        "seconds_none": best["none"],
        "seconds_store": best["store"],
        "cpu_seconds_none": cpu["none"],
        "cpu_seconds_store": cpu["store"],
        "time_ratio": best["store"] / best["none"],
        "max_abs_diff": diff,
    }


def pipeline_level(recipe_set: str, repeats: int) -> dict:
    """Whole second runs (tiny models) over the demo slide: 3 recipes added, store vs none."""
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.pipeline import Extractor

    slide = REPO / "zoomfeat" / "data" / "CMU-1-Small-Region.svs"
    base = {"model": "tiny", "encoder": "tiny", "progress": False, "num_workers": 0}
    add = {"features.recipes": RECIPE_SETS[recipe_set]}
    best = {"none": float("inf"), "store": float("inf")}
    cpu = {"none": float("inf"), "store": float("inf")}
    store_bytes = tiles = n20 = 0
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(tmp)
        first = Extractor(ExtractConfig.from_kwargs(**base, store=str(root / "store"))).extract(
            slide, root / "first"
        )
        n20 = first.n20
        store_bytes = sum(p.stat().st_size for p in (root / "store").rglob("*.h5"))
        for r in range(repeats):
            for name in ("none", "store"):
                out = root / f"{name}{r}"
                shutil.copytree(root / "first", out)
                extra = {"store": str(root / "store")} if name == "store" else {}
                ex = Extractor(ExtractConfig.from_kwargs(**base, **add, **extra))
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                res = ex.extract(slide, out)
                dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
                assert res.status == "done" and len(res.written) == 3, res.line()
                best[name] = min(best[name], dt)
                cpu[name] = min(cpu[name], (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime))
                tiles = res.tiles
        diff = 0.0
        for f in (root / "none0").rglob("*.h5"):
            if "features_" in str(f):
                import h5py

                with h5py.File(f) as x, h5py.File(root / "store0" / f.relative_to(root / "none0")) as y:
                    diff = max(diff, float(np.abs(x["features"][:] - y["features"][:]).max()))
    return {
        "level": "pipeline tiny (demo)",
        "recipes": recipe_set,
        "tiles": tiles,
        "seconds_none": best["none"],
        "seconds_store": best["store"],
        "cpu_seconds_none": cpu["none"],
        "cpu_seconds_store": cpu["store"],
        "time_ratio": best["store"] / best["none"],
        "max_abs_diff": diff,
        "store_bytes_per_kept_20x_tile": store_bytes / max(n20, 1),
    }


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every HDF5 file under ``root``: (sha256, mtime in ns)."""
    import hashlib

    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).digest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*.h5"))}  # fmt: skip


def fill_level(repeats: int) -> dict:
    """A store given afterwards (tiny models, demo slide): first run without the store, first run
    with it, and the fill of a copy of the first run's complete bags; best wall and CPU seconds."""
    import h5py

    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.pipeline import Extractor

    slide = REPO / "zoomfeat" / "data" / "CMU-1-Small-Region.svs"
    base = {"model": "tiny", "encoder": "tiny", "progress": False, "num_workers": 0}
    runs = ("plain", "with_store", "fill")
    best = dict.fromkeys(runs, float("inf"))
    cpu = dict.fromkeys(runs, float("inf"))
    diff = 0.0
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(tmp)
        for r in range(repeats):
            for name in runs:
                out, store = root / f"{name}{r}", root / f"store_{name}{r}"
                if name == "fill":
                    shutil.copytree(root / f"plain{r}", out)
                    bags = _files(out)
                ex = Extractor(
                    ExtractConfig.from_kwargs(**base, **({} if name == "plain" else {"store": str(store)}))
                )
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                res = ex.extract(slide, out)
                dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
                assert res.status == "done", res.line()
                best[name] = min(best[name], dt)
                cpu[name] = min(cpu[name], (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime))
                if name == "fill":
                    assert res.store == "fill" and res.written == [] and _files(out) == bags, res.line()
                    for m in ("m0", "m2"):
                        with h5py.File(store / m / f"{slide.stem}.h5") as a, \
                             h5py.File(root / f"store_with_store{r}" / m / f"{slide.stem}.h5") as b:  # fmt: skip
                            names = ["latent", *(f"emb/{j}" for j in a.get("emb", {}))]
                            for k in names:
                                diff = max(diff, float(abs(a[k][:] - b[k][:]).max()))
    return {
        "level": "fill tiny (demo)",
        **{f"seconds_{k}": round(v, 2) for k, v in best.items()},
        **{f"cpu_seconds_{k}": round(v, 2) for k, v in cpu.items()},
        "cpu_ratio_fill_to_plain": round(cpu["fill"] / cpu["plain"], 3),
        "max_abs_diff_entry": diff,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiles", type=int, default=2, help="full-size 20x tiles (at most 16)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--recipes", nargs="+", default=list(RECIPE_SETS), choices=list(RECIPE_SETS))
    p.add_argument("--skip-full", action="store_true")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--fill", action="store_true", help="only: what a store given to complete bags costs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.fill:
        row = fill_level(args.repeats)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(row, indent=2))
        return
    rows = []
    for rs in args.recipes:
        if not args.skip_pipeline:
            rows.append(pipeline_level(rs, args.repeats))
        if not args.skip_full:
            rows.append(model_level("zoomldm_brca", rs, args.tiles, args.repeats, dev))
        for r in rows[-2:]:
            print(json.dumps(r), flush=True)
    print(
        f"store_cost: second run adding 3 recipes, torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}"
    )
    print(
        f"{'level':<26}{'recipes':<17}{'tiles':>6}{'GFLOP/tile none':>17}{'store':>8}{'s none':>9}{'s store':>9}{'CPU-s none':>12}{'store':>8}{'time ratio':>12}{'max|diff|':>11}"
    )
    for r in rows:
        fl = (
            f"{r['gflop_per_tile_none']:>17.1f}{r['gflop_per_tile_store']:>8.1f}"
            if "gflop_per_tile_none" in r
            else f"{'':>17}{'':>8}"
        )
        print(
            f"{r['level']:<26}{r['recipes']:<17}{r['tiles']:>6}{fl}{r['seconds_none']:>9.2f}{r['seconds_store']:>9.2f}"
            f"{r['cpu_seconds_none']:>12.2f}{r['cpu_seconds_store']:>8.2f}{r['time_ratio']:>12.3f}{r['max_abs_diff']:>11.1e}"
        )
    for r in rows:
        if "store_bytes_per_kept_20x_tile" in r:
            print(
                f"  store on disk ({r['level']}): {r['store_bytes_per_kept_20x_tile'] / 1024:.1f} KB per kept 20x tile"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
