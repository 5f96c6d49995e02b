"""``python -m zoomfeat.heatmap SLIDE... bench_dir=DIR``: attention heatmaps of test slides.

Reads the attention a benchmark run saved (``{bench_dir}/attention/{set}/repeat{r}_fold{f}.h5``,
one group per test slide: ``attention``, ``coords``) and the slide's thumbnail (openslide, via
:class:`zoomfeat.slide.reader.Slide`), and writes one PNG per slide, as CLAM users know them:

* top row: the thumbnail, then each feature set's attention over it side by side (by default
  ``zoomldm_20x`` and ``zoomldm_5x``: 20x and 5x attention), as percentile ranks within the
  slide (CLAM's convention: 1 = the most attended tile) on a ``jet`` colour map;
* one row per feature set: its ``top_k`` most attended tiles, read from the slide.

Tile footprints come from the bags' ``coords`` attribute ``patch_size_level0`` (the source
directories are in the run's ``run.json``), else from the spacing of the coords. Examples::

    python -m zoomfeat.heatmap slides/TCGA-A1-A0SK.svs bench_dir=bench_results/brca/abmil
    python -m zoomfeat.heatmap s.svs bench_dir=runs/brca 'feature_sets=[uni_20x,uni_5x]' top_k=8

A slide that is not a test slide of the run, a missing run directory or a slide openslide cannot
open is one line ``zoomfeat heatmap: error: ...`` (exit status 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoomfeat.cli import hydra_main
from zoomfeat.runtime.config import check, load_config
from zoomfeat.runtime.errors import InputError


@dataclass
class HeatmapConfig:
    """``conf/heatmap.yaml``."""

    bench_dir: str | None = None  # a zoomfeat.bench out_dir (holds attention/ and run.json)
    slides: list[str] = field(default_factory=list)  # slide files (bare arguments)
    #: feature sets shown side by side (their attention files under bench_dir)
    feature_sets: list[str] = field(default_factory=lambda: ["zoomldm_20x", "zoomldm_5x"])
    repeat: int = 0  # which CV repeat's attention to show
    top_k: int = 6  # most attended tiles shown per feature set
    thumbnail_mpp: float = 8.0  # thumbnail resolution (um/px; coarser if the slide is large)
    max_px: int = 2048  # longest thumbnail side
    tile_px: int = 192  # size of each top tile in the figure
    out_dir: str | None = None  # default {bench_dir}/heatmaps

    def __post_init__(self) -> None:
        check(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        check(bool(self.feature_sets), "feature_sets is empty: name the sets whose attention to show")


def _find_attention(bench_dir: Path, feature_set: str, slide_id: str, repeat: int) -> dict[str, Any]:
    """The attention entry of ``slide_id`` in the fold file of ``feature_set`` that tested it."""
    folder = bench_dir / "attention" / feature_set
    files = sorted(folder.glob(f"repeat{repeat}_fold*.h5"))
    if not files:
        raise InputError(
            f"no attention files at {folder}/repeat{repeat}_fold*.h5: run the benchmark with "
            f"save_attention=true and feature set {feature_set!r} (bench_dir={bench_dir})"
        )
    for path in files:
        with h5py.File(path, "r") as f:
            key = slide_id.replace("/", "_")
            if key in f:
                g = f[key]
                return {
                    "attention": g["attention"][()],
                    "coords": g["coords"][()] if "coords" in g else None,
                    "file": path,
                    **{k: g.attrs[k] for k in ("label", "prob") if k in g.attrs},
                }
    raise InputError(
        f"slide {slide_id!r} is not a test slide of feature set {feature_set!r} in {folder} "
        f"(repeat {repeat}); check the slide file name or bench_dir"
    )


def _tile_size(bench_dir: Path, feature_set: str, slide_id: str, coords: np.ndarray) -> float:
    """Level-0 tile footprint: the bag's ``patch_size_level0``, else the coords' grid spacing."""
    run = bench_dir / "run.json"
    if run.is_file():
        source = json.loads(run.read_text()).get("sources", {}).get(feature_set)
        bag = Path(source) / f"{slide_id}.h5" if source else None
        if bag is not None and bag.is_file():
            with h5py.File(bag, "r") as f:
                if "coords" in f and "patch_size_level0" in f["coords"].attrs:
                    return float(f["coords"].attrs["patch_size_level0"])
    steps = [np.diff(np.unique(coords[:, k])) for k in (0, 1)]
    steps = np.concatenate([s[s > 0] for s in steps]) if len(coords) > 1 else np.array([])
    if not len(steps):
        raise InputError(
            f"{bench_dir}: cannot tell the tile size of {slide_id!r} ({feature_set}): no bag with "
            "patch_size_level0 and a single tile"
        )
    return float(steps.min())


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """Each score's rank within the slide in (0, 1] (1: the highest), ties sharing their mean rank."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    return rankdata(scores) / len(scores) if len(scores) else scores


def attention_overlay(shape: tuple[int, int], coords: np.ndarray, ranks: np.ndarray, size0: float,
                      dx: float, dy: float) -> np.ndarray:  # fmt: skip
    """(h, w) array of percentile ranks on the thumbnail grid (NaN where no tile lies)."""
    heat = np.full(shape, np.nan, dtype=np.float32)
    for (x, y), r in zip(coords, ranks):
        x0, y0 = int(x / dx), int(y / dy)
        x1, y1 = max(x0 + 1, int(np.ceil((x + size0) / dx))), max(y0 + 1, int(np.ceil((y + size0) / dy)))
        heat[max(y0, 0) : y1, max(x0, 0) : x1] = r
    return heat


def slide_heatmap(slide_path: str | Path, cfg: HeatmapConfig) -> dict[str, Any]:
    """Write ``{out_dir}/{slide_id}.png``; returns ``{"path", "top": {set: [(x, y, attention), ...]}}``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from zoomfeat.runtime.atomic import atomic_path, ensure_dir
    from zoomfeat.slide.naming import slide_id_from_path
    from zoomfeat.slide.reader import Slide

    bench_dir = Path(cfg.bench_dir)
    slide_id = slide_id_from_path(slide_path)
    entries = {fs: _find_attention(bench_dir, fs, slide_id, cfg.repeat) for fs in cfg.feature_sets}
    for e in entries.values():
        if e["coords"] is None:
            raise InputError(
                f"{e['file']}: slide {slide_id!r} has no coords (an instance CSV set?); no heatmap"
            )
    slide = Slide.open(slide_path)
    thumb, dx, dy = slide.thumbnail(cfg.thumbnail_mpp, max_px=cfg.max_px, progress=False)
    sets = list(entries)
    k = cfg.top_k
    n_cols = max(1 + len(sets), k)
    fig = plt.figure(figsize=(3.2 * n_cols, 3.4 + 1.9 * len(sets) * (k > 0)))
    grid = fig.add_gridspec(
        1 + (len(sets) if k else 0), n_cols, height_ratios=[3.4] + [1.9] * (len(sets) if k else 0)
    )
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(thumb)
    ax.set_title(slide_id, fontsize=8)
    ax.axis("off")
    top: dict[str, list[tuple[int, int, float]]] = {}
    for col, fs in enumerate(sets, start=1):
        e = entries[fs]
        coords, att = np.asarray(e["coords"]), np.asarray(e["attention"], dtype=np.float64)
        size0 = _tile_size(bench_dir, fs, slide_id, coords)
        heat = attention_overlay(thumb.shape[:2], coords, percentile_ranks(att), size0, dx, dy)
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(thumb)
        im = ax.imshow(np.ma.masked_invalid(heat), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        prob = e.get("prob")
        extra = f", p={float(np.max(prob)):.2f}" if prob is not None else ""
        ax.set_title(f"{fs} attention ({len(att)} tiles{extra})", fontsize=8)
        ax.axis("off")
        order = np.argsort(-att, kind="stable")[:k]
        top[fs] = [(int(coords[i, 0]), int(coords[i, 1]), float(att[i])) for i in order]
        for j, i in enumerate(order):
            tax = fig.add_subplot(grid[col, j])
            x, y = coords[i]
            tax.imshow(slide.read_box(float(x), float(y), size0, size0, cfg.tile_px, cfg.tile_px))
            tax.set_title(f"{fs} #{j + 1}: {att[i]:.3f}\n({int(x)}, {int(y)})", fontsize=7)
            tax.axis("off")
    fig.colorbar(im, ax=fig.axes[1 : 1 + len(sets)], fraction=0.02, label="attention percentile")
    out_dir = ensure_dir(
        Path(cfg.out_dir) if cfg.out_dir else bench_dir / "heatmaps", "heatmap output directory"
    )
    path = out_dir / f"{slide_id}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return {"path": path, "top": top}


def run(cfg: Any) -> list[dict[str, Any]]:
    """Hydra task: ``conf/heatmap.yaml`` -> :class:`HeatmapConfig` -> one PNG per slide."""
    hm = load_config(HeatmapConfig, cfg, "heatmap")
    if not hm.bench_dir:
        raise InputError("bench_dir= is needed: the out_dir of a zoomfeat.bench run (it holds attention/)")
    if not Path(hm.bench_dir).is_dir():
        raise InputError(f"no benchmark directory at {hm.bench_dir} (bench_dir=)")
    if not hm.slides:
        raise InputError("name the slide files to draw: python -m zoomfeat.heatmap SLIDE... bench_dir=DIR")
    results = [slide_heatmap(s, hm) for s in hm.slides]
    for r in results:
        print(r["path"])
    return results


def main() -> Any:
    return hydra_main("heatmap", run, inputs_key="slides")


if __name__ == "__main__":
    main()
