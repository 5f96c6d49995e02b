"""The cost of k feature recipes in one pass against k separate runs on the same tiles (issue 12).

    python benchmarks/recipes_cost.py                    # full size, 2 tiles (CPU: minutes) + tiny
    python benchmarks/recipes_cost.py --skip-full        # tiny only
    python benchmarks/recipes_cost.py --pipeline         # + end to end on a synthetic slide (tiny)
    python benchmarks/recipes_cost.py --tiles 4 --json out.json

The grid is issue 12's: timesteps {50, 200, 500} x taps {[middle_block], [output_blocks.2],
[output_blocks.4]} = 9 recipes. For each 20x tile (conditioned on its own 1x1 UNI grid, as in
extraction):

- *separate*: for each recipe, what a run of that recipe alone computes: UNI, the Summarizer,
  the VQ encoding and the UNet up to the recipe's tap;
- *one pass*: UNI, the Summarizer and the VQ encoding once; the UNet once per timestep, up to the
  deepest tap any recipe at that timestep needs (``FeatureModels.zoomldm_features``).

It prints the FLOPs of both (counted by ``torch.utils.flop_counter`` on one tile; their ratio is
what the pass can save at best: about 0.16 at full size, the VQ encoder being the most expensive
model) and the measured seconds and their ratio (goal: at most 0.25), both measured in this run on
the same tiles, interleaved, best of ``--repeats``. ``--pipeline`` also times whole extractions of
a synthetic slide (slide reading, tissue, DataLoader, writing bags: one run with 9 recipes against 9
runs of one recipe each), with the tiny model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

TIMESTEPS = (50, 200, 500)
TAPS = (("middle_block",), ("output_blocks.2",), ("output_blocks.4",))


def grid_recipes() -> list:
    from zoomfeat.features.recipes import Recipe

    out = []
    for t in TIMESTEPS:
        for taps in TAPS:
            r = Recipe("", t, taps)
            out.append(Recipe(r.auto_name(), t, taps))
    return out


def build(model: str, device: torch.device, recipes: list):
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.models import FeatureModels

    cfg = ExtractConfig.from_kwargs(
        model=model,
        encoder="uni" if model == "zoomldm_brca" else "tiny",
        allow_random_weights=True,
        progress=False,
        device=str(device),
    )
    return FeatureModels(cfg, device, recipes=recipes, encoder_families={})


def features(models, tiles: torch.Tensor, noise: torch.Tensor) -> dict:
    """What one extraction computes for 20x tiles: conditioning embeddings, contexts, every recipe."""
    emb = models.embed(tiles, models.cond_job(224))
    ctx = models.contexts([emb[:, :, None, None]], [0])
    return models.zoomldm_features(tiles, {224: ctx}, noise)


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def model_level(model: str, n_tiles: int, batch: int, repeats: int, device: torch.device) -> dict:
    """FLOPs and seconds of the 9 recipes in one pass vs 9 separate runs on ``n_tiles`` tiles."""
    recipes = grid_recipes()
    one_pass = build(model, device, recipes)
    separate = [build(model, device, [r]) for r in recipes]
    g = torch.Generator().manual_seed(0)
    px = one_pass.cfg.tile_px
    tiles = (torch.rand(n_tiles, px, px, 3, generator=g) * 255).to(torch.uint8).to(device)
    noise = torch.randn(n_tiles, 1, *one_pass.latent_shape, generator=g).to(device)

    def run_pass():
        out = {}
        for i in range(0, n_tiles, batch):
            for k, v in features(one_pass, tiles[i : i + batch], noise[i : i + batch]).items():
                out.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in out.items()}

    def run_separate():
        out = {}
        for m in separate:
            for i in range(0, n_tiles, batch):
                for k, v in features(m, tiles[i : i + batch], noise[i : i + batch]).items():
                    out.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in out.items()}

    flops_pass = count_flops(lambda: features(one_pass, tiles[:1], noise[:1]))
    flops_sep = sum(count_flops(lambda m=m: features(m, tiles[:1], noise[:1])) for m in separate)
    best = {"pass": float("inf"), "separate": float("inf")}
    a = b = None
    for _ in range(repeats):  # interleaved, so a change of machine load hits both
        t0 = time.perf_counter()
        a = run_pass()
        best["pass"] = min(best["pass"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = run_separate()
        best["separate"] = min(best["separate"], time.perf_counter() - t0)
    # the same numbers either way (the separate runs stop at their own tap; same batches)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    return {
        "model": model,
        "tiles": n_tiles,
        "recipes": len(recipes),
        "gflop_per_tile_pass": flops_pass / 1e9,
        "gflop_per_tile_separate": flops_sep / 1e9,
        "flop_ratio": flops_pass / flops_sep,
        "seconds_pass": best["pass"],
        "seconds_separate": best["separate"],
        "time_ratio": best["pass"] / best["separate"],
        "max_abs_diff_pass_vs_separate": diff,
    }


def pipeline_level(repeats: int) -> dict:
    """Whole extractions (tiny model) of one synthetic slide: 9 recipes in one run vs 9 runs."""
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.pipeline import Extractor
    from zoomfeat.slide.synthetic import write_synthetic_slide

    base = {"model": "tiny", "encoder": "tiny", "progress": False, "num_workers": 0}
    sweep = {"features.sweep": {"timestep": list(TIMESTEPS), "taps": [list(t) for t in TAPS]}}
    best = {"pass": float("inf"), "separate": float("inf")}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slide = Path(tmp) / "recipes_cost.svs"
        write_synthetic_slide(slide, width=2048, height=2048, mpp=0.5, levels=3, seed=0, tissue_fraction=0.5)
        tiles = 0
        for r in range(repeats):
            t0 = time.perf_counter()
            res = Extractor(ExtractConfig.from_kwargs(**base, **sweep)).extract(slide, Path(tmp) / f"pass{r}")
            best["pass"] = min(best["pass"], time.perf_counter() - t0)
            tiles = res.tiles
            t0 = time.perf_counter()
            for i, t in enumerate(TIMESTEPS):
                for j, taps in enumerate(TAPS):
                    cfg = ExtractConfig.from_kwargs(
                        **base, **{"features.timestep": t, "features.taps": list(taps)}
                    )
                    Extractor(cfg).extract(slide, Path(tmp) / f"sep{r}_{i}{j}")
            best["separate"] = min(best["separate"], time.perf_counter() - t0)
    return {
        "model": "tiny (pipeline)",
        "tiles": tiles,
        "recipes": 9,
        "seconds_pass": best["pass"],
        "seconds_separate": best["separate"],
        "time_ratio": best["pass"] / best["separate"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiles", type=int, default=2, help="full-size tiles (the tiny model gets 8x as many)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-full", action="store_true")
    p.add_argument("--pipeline", action="store_true", help="also time whole extractions (tiny model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    rows = [model_level("tiny", 8 * args.tiles, 8, args.repeats, dev)]
    if not args.skip_full:
        rows.append(model_level("zoomldm_brca", args.tiles, args.batch, args.repeats, dev))
    if args.pipeline:
        rows.append(pipeline_level(args.repeats))
    print(
        f"recipes_cost: 3 timesteps x 3 taps, torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}"
    )
    head = f"{'model':<18}{'tiles':>6}{'GFLOP/tile pass':>17}{'separate':>10}{'FLOP ratio':>12}{'s pass':>9}{'s separate':>12}{'time ratio':>12}"
    print(head)
    for r in rows:
        fl = (
            f"{r['gflop_per_tile_pass']:>17.1f}{r['gflop_per_tile_separate']:>10.1f}{r['flop_ratio']:>12.3f}"
            if "flop_ratio" in r
            else f"{'':>17}{'':>10}{'':>12}"
        )
        print(
            f"{r['model']:<18}{r['tiles']:>6}{fl}{r['seconds_pass']:>9.2f}{r['seconds_separate']:>12.2f}{r['time_ratio']:>12.3f}"
        )
    for r in rows:
        if "max_abs_diff_pass_vs_separate" in r:
            print(f"  {r['model']}: max |one pass - separate| = {r['max_abs_diff_pass_vs_separate']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
