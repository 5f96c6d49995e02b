"""``python -m zoomfeat.heatmap SLIDE... bench_dir=DIR``: instance-score heatmaps of test slides.

Reads the instance scores a benchmark run saved (``{bench_dir}/attention/{set}/repeat{r}_fold{f}.h5``,
or ``attention/{set}/{aggregator}/...`` for a run of several aggregators; one group per test slide:
``attention``, ``coords``), or, with ``source=model``, recomputes them from the saved fold model
(``models/{aggregator}/{set}/seed{s}_repeat{r}_fold{f}.safetensors``) and the slide's bag (the
run's ``run.json`` names the bag directories), and the slide's thumbnail (openslide, via
:class:`zoomfeat.slide.reader.Slide`), and writes one PNG per slide, as CLAM users know them.

Every aggregator that scores instances is drawn (:mod:`zoomfeat.mil.aggregators`): attention for
ABMIL, CLAM-SB and DSMIL, gradient x input ``s_i = sum_d z_{i,d} dy/dz_{i,d}`` (on the
standardised instances) for TransMIL, mean and max pooling; for classification (y = the logit),
regression (y = the prediction) and survival (y = the log-risk) alike. The panel titles name the
score.

* top row: the thumbnail, then each feature set's attention over it side by side (by default
  ``zoomldm_20x`` and ``zoomldm_5x``: 20x and 5x attention), as percentile ranks within the
  slide (CLAM's convention: 1 = the most attended tile) on a ``jet`` colour map;
* one row per feature set: its ``top_k`` most attended tiles, read from the slide.

Tile footprints come from the bags' ``coords`` attribute ``patch_size_level0`` (the source
directories are in the run's ``run.json``), else from the spacing of the coords. Examples::

    python -m zoomfeat.heatmap slides/TCGA-A1-A0SK.svs bench_dir=bench_results/brca/abmil
    python -m zoomfeat.heatmap s.svs bench_dir=runs/brca 'feature_sets=[uni_20x,uni_5x]' top_k=8
    python -m zoomfeat.heatmap s.svs bench_dir=runs/brca aggregator=transmil source=model seed=1

Drawn into the run's own ``heatmaps/`` (the default ``out_dir``), the run's ``report.html`` is
redrawn so that its gallery shows them.

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
    #: which aggregator's scores (a run of several keeps attention/{set}/{aggregator}/); null: the only one
    aggregator: str | None = None
    #: attention (the saved scores) | model (recomputed from the saved fold model and the bag)
    source: str = "attention"
    seed: int | None = None  # source=model: which seed's fold model (null: the run's first seed)

    def __post_init__(self) -> None:
        check(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        check(
            self.source in ("attention", "model"), f"source must be attention or model, got {self.source!r}"
        )
        check(bool(self.feature_sets), "feature_sets is empty: name the sets whose attention to show")


SCORE_NAMES = {"attention": "attention", "gradient_x_input": "gradient x input"}


def _find_attention(
    bench_dir: Path, feature_set: str, *, slide_id: str, repeat: int, aggregator: str | None = None
) -> dict[str, Any]:
    """The attention entry of ``slide_id`` in the fold file of ``feature_set`` that tested it."""
    folder = bench_dir / "attention" / feature_set
    if aggregator and (folder / aggregator).is_dir():
        folder = folder / aggregator
    files = sorted(folder.glob(f"repeat{repeat}_fold*.h5"))
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not files and subdirs:
        raise InputError(
            f"{folder} holds the scores of several aggregators ({', '.join(subdirs)}): choose one with aggregator="
        )
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
                kind = f.attrs.get("score_kind", "attention")
                return {
                    "attention": g["attention_logits"][()] if kind != "attention" else g["attention"][()],
                    "coords": g["coords"][()] if "coords" in g else None,
                    "file": path,
                    "score_kind": kind.decode() if isinstance(kind, bytes) else str(kind),
                    **{k: g.attrs[k] for k in ("label", "prob") if k in g.attrs},
                }
    raise InputError(
        f"slide {slide_id!r} is not a test slide of feature set {feature_set!r} in {folder} "
        f"(repeat {repeat}); check the slide file name or bench_dir"
    )


def _model_scores(bench_dir: Path, feature_set: str, slide_id: str, cfg: HeatmapConfig) -> dict[str, Any]:
    """``source=model``: the slide's instance scores recomputed from the fold model that tested it
    (``predictions.csv`` names the fold) and its bag (``run.json`` names the bag directory)."""
    import pandas as pd
    import torch

    from zoomfeat.bags import bag_exists, open_bag
    from zoomfeat.mil.fold_loop import load_fold_model

    pred_path, run_path = bench_dir / "predictions.csv", bench_dir / "run.json"
    if not pred_path.is_file() or not run_path.is_file():
        raise InputError(f"{bench_dir}: source=model needs the run's predictions.csv and run.json")
    pred = pd.read_csv(pred_path, dtype={"slide_id": str})
    rows = pred[
        (pred["slide_id"] == slide_id) & (pred["feature_set"] == feature_set) & (pred["repeat"] == cfg.repeat)
    ]
    if "aggregator" in rows and cfg.aggregator:
        rows = rows[rows["aggregator"] == cfg.aggregator]
    if "seed" in rows and len(rows):
        rows = rows[rows["seed"] == (cfg.seed if cfg.seed is not None else rows["seed"].min())]
    if rows.empty:
        raise InputError(
            f"slide {slide_id!r} is not a test slide of feature set {feature_set!r} in {pred_path} "
            f"(repeat {cfg.repeat}, aggregator {cfg.aggregator}, seed {cfg.seed})"
        )
    row = rows.iloc[0]
    agg = (
        str(row["aggregator"])
        if "aggregator" in row and isinstance(row["aggregator"], str)
        else (cfg.aggregator or "")
    )
    seed = int(row["seed"]) if "seed" in row else 0
    model_path = (
        bench_dir
        / "models"
        / agg
        / feature_set
        / f"seed{seed}_repeat{cfg.repeat}_fold{int(row['fold'])}.safetensors"
    )
    if not model_path.is_file():
        raise InputError(f"no fold model at {model_path}: run the benchmark with save_models=true")
    source = json.loads(run_path.read_text()).get("sources", {}).get(feature_set)
    bag_path = Path(source) / f"{slide_id}.h5" if source else None
    if bag_path is None or not bag_exists(bag_path):  # a fused bag without a file is derived
        raise InputError(f"no bag of slide {slide_id!r} for {feature_set!r} (run.json sources: {source})")
    model, _ = load_fold_model(model_path)
    bag = open_bag(bag_path)
    feats, coords = np.asarray(bag.features, dtype=np.float32), np.asarray(bag.coords)
    scores = model.instance_scores(torch.from_numpy(feats).unsqueeze(0)).squeeze(0).numpy()
    return {"attention": scores, "coords": coords, "file": model_path, "score_kind": model.score_kind,
            "label": row.get("label", row.get("target", row.get("event"))), "prob": row.get("prob", row.get("pred", row.get("risk")))}  # fmt: skip


def _tile_size(bench_dir: Path, feature_set: str, slide_id: str, coords: np.ndarray) -> float:
    """Level-0 tile footprint: the bag's ``patch_size_level0``, else the coords' grid spacing."""
    from zoomfeat.bags import fused_parts

    run = bench_dir / "run.json"
    if run.is_file():
        source = json.loads(run.read_text()).get("sources", {}).get(feature_set)
        bag = Path(source) / f"{slide_id}.h5" if source else None
        parts = fused_parts(bag) if bag is not None and not bag.is_file() else None
        bag = parts.x20 if parts is not None else bag  # a derived fused bag: its 20x part's tiles
        if bag is not None and bag.is_file():
            with h5py.File(bag, "r") as f:
                if "coords" in f and "patch_size_level0" in f["coords"].attrs:
                    return float(f["coords"].attrs["patch_size_level0"])
    diffs = [np.diff(np.unique(coords[:, k])) for k in (0, 1)]
    steps = np.concatenate([s[s > 0] for s in diffs]) if len(coords) > 1 else np.array([])
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


def attention_overlay(shape: tuple[int, int], coords: np.ndarray, ranks: np.ndarray, *, size0: float,
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

    if not cfg.bench_dir:
        raise InputError("bench_dir= is needed: the out_dir of a zoomfeat.bench run (it holds attention/)")
    bench_dir = Path(cfg.bench_dir)
    slide_id = slide_id_from_path(slide_path)
    if cfg.source == "model":
        entries = {fs: _model_scores(bench_dir, fs, slide_id, cfg) for fs in cfg.feature_sets}
    else:
        entries = {
            fs: _find_attention(
                bench_dir, fs, slide_id=slide_id, repeat=cfg.repeat, aggregator=cfg.aggregator
            )
            for fs in cfg.feature_sets
        }
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
        heat = attention_overlay(thumb.shape[:2], coords, percentile_ranks(att), size0=size0, dx=dx, dy=dy)
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(thumb)
        im = ax.imshow(np.ma.masked_invalid(heat), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        prob = e.get("prob")
        extra = f", p={float(np.max(prob)):.2f}" if prob is not None else ""
        score = SCORE_NAMES.get(e.get("score_kind", "attention"), "attention")
        ax.set_title(f"{fs} {score} ({len(att)} tiles{extra})", fontsize=8)
        ax.axis("off")
        order = np.argsort(-att, kind="stable")[:k]
        top[fs] = [(int(coords[i, 0]), int(coords[i, 1]), float(att[i])) for i in order]
        for j, i in enumerate(order):
            tax = fig.add_subplot(grid[col, j])
            x, y = coords[i]
            tax.imshow(slide.read_box(float(x), float(y), size0, size0, out_w=cfg.tile_px, out_h=cfg.tile_px))
            tax.set_title(f"{fs} #{j + 1}: {att[i]:.3f}\n({int(x)}, {int(y)})", fontsize=7)
            tax.axis("off")
    fig.colorbar(im, ax=fig.axes[1 : 1 + len(sets)], fraction=0.02, label="score percentile")
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
    page = refresh_report(Path(hm.bench_dir), out_dir=Path(hm.out_dir) if hm.out_dir else None)
    if page is not None:
        print(f"{page} (redrawn with the heatmaps)")
    return results


def refresh_report(bench_dir: Path, *, out_dir: Path | None = None) -> Path | None:
    """Redraw a finished run's ``report.html`` (it embeds ``heatmaps/``) after heatmaps were drawn
    into ``{bench_dir}/heatmaps`` (``out_dir`` None, or a directory inside it); returns the page,
    or None when there is no page to redraw (an unfinished run, or heatmaps drawn elsewhere)."""
    from zoomfeat.mil.html_report import write_html_report_safely

    if not (bench_dir / "report.html").is_file():
        return None
    gallery = (bench_dir / "heatmaps").resolve()
    if out_dir is not None and gallery not in (out_dir.resolve(), *out_dir.resolve().parents):
        return None
    return write_html_report_safely(bench_dir).get("html")


def main() -> Any:
    return hydra_main("heatmap", run, inputs_key="slides")


if __name__ == "__main__":
    main()
