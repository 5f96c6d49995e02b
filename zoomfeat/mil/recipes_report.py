"""Recipe report: test AUC over taps x timesteps for the selection candidates (issue 12).

A recipe family's bags record the recipe as file attributes (``zoomfeat.extract``): ``timestep``
(int), ``taps`` (JSON list of UNet block names), ``pooling`` (str), ``ensemble`` (int) and
``recipe_name`` (the family: its sets are ``{recipe_name}_{suffix}``, suffix ``20x``, ``5x`` or
``fused``). :func:`read_recipe` reads them from a set's first bag (one set holds one recipe:
:mod:`zoomfeat.mil.provenance` checks every bag shares the config hash); names are never parsed.

The heatmap has one panel per *group*, the recipe entries a cell does not show: (set suffix,
pooling, ensemble, UNI input size). In a panel, rows are tap lists and columns timesteps; a cell is a candidate's
test AUC over the outer folds, ``mean [lo, hi]`` with the t-based 95% interval of the fold mean
(:func:`zoomfeat.mil.metrics.summarize`, as ``summary.csv``), and ``chosen n/N`` when nested
selection picked it in n of the N folds (those cells are outlined). A cell is an insight into
the recipe space, not a result: picking the best cell afterwards is the optimistic choice the
selected row avoids. Two candidates that would share a cell (e.g. bags without ``recipe_name``)
get panels of their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.bags import is_bag_dir, list_bags, read_attrs
from zoomfeat.mil.metrics import summarize
from zoomfeat.mil.report import write_csv
from zoomfeat.runtime.atomic import atomic_path

#: heatmap panels per row of the figure
PANELS_ACROSS = 3
HEATMAP_COLUMNS = (
    "feature_set",
    "recipe_name",
    "suffix",
    "pooling",
    "ensemble",
    "cond_px",
    "taps",
    "timestep",
    "auc_mean",
    "auc_ci_low",
    "auc_ci_high",
    "n_folds",
    "times_chosen",
    "folds_chosen_from",
)


def _taps(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return (value,)
    if isinstance(value, str):
        return (value,)
    return tuple(str(t) for t in np.atleast_1d(value).tolist())


def read_recipe(feature_set: str, source: Path) -> dict[str, Any] | None:
    """A set's recipe from its first bag's attributes, or None (not a bag directory, no bags, or
    no ``timestep``/``taps``: not a ZoomLDM recipe).

    Returns:
        ``{"recipe_name", "suffix", "timestep", "taps" (tuple), "pooling", "ensemble", "cond_px"}``;
        ``pooling`` defaults to ``mean``, ``ensemble`` to 1, ``cond_px`` to 224 (bags of earlier
        versions), ``recipe_name`` to the set's own name
        (suffix ``""``) when the bags do not record them.
    """
    source = Path(source)
    if not is_bag_dir(source):  # a derived fused set has no directory
        return None
    bags = list_bags(source)
    if not bags:
        return None
    attrs = read_attrs(next(iter(bags.values())))
    if "timestep" not in attrs or "taps" not in attrs:
        return None
    family = str(attrs.get("recipe_name", feature_set))
    suffix = feature_set[len(family) + 1 :] if feature_set.startswith(f"{family}_") else ""
    return {
        "recipe_name": family,
        "suffix": suffix,
        "timestep": int(attrs["timestep"]),
        "taps": _taps(attrs["taps"]),
        "pooling": str(attrs.get("pooling", "mean")),
        "ensemble": int(attrs.get("ensemble", 1)),
        "cond_px": int(attrs.get("cond_px", 224)),
    }


def recipes_table(
    folds: pd.DataFrame,
    sources: Mapping[str, Path],
    chosen: Mapping[str, int],
    n_choices: int,
) -> pd.DataFrame:
    """One row per candidate with recipe attributes: its recipe, test AUC mean and 95% CI over
    the folds, and how often nested selection chose it (columns :data:`HEATMAP_COLUMNS`).

    Args:
        folds: the fold table (``feature_set``, ``auc`` per (repeat, fold)).
        sources: candidate -> its bag directory.
        chosen: candidate -> folds it was chosen in; ``n_choices``: folds chosen in.
    """
    rows = []
    for fs, source in sources.items():
        recipe = read_recipe(fs, source)
        if recipe is None:
            continue
        stats = summarize(folds.loc[folds["feature_set"] == fs, "auc"].to_numpy(dtype=float))
        rows.append(
            {
                "feature_set": fs,
                **recipe,
                "taps": json.dumps(list(recipe["taps"])),
                "auc_mean": stats["mean"],
                "auc_ci_low": stats["ci_low"],
                "auc_ci_high": stats["ci_high"],
                "n_folds": stats["n"],
                "times_chosen": int(chosen.get(fs, 0)),
                "folds_chosen_from": int(n_choices),
            }
        )
    table = pd.DataFrame(rows, columns=list(HEATMAP_COLUMNS))
    if len(table):
        # candidates that would share a cell of one panel each get a panel of their own
        key = ["suffix", "pooling", "ensemble", "cond_px", "taps", "timestep"]
        clash = table.duplicated(key, keep=False)
        table.loc[clash, "suffix"] = table.loc[clash, "feature_set"]
    return table


def _cell_text(row: pd.Series) -> str:
    if np.isnan(row["auc_mean"]):
        return "–"
    ci = "" if np.isnan(row["auc_ci_low"]) else f"\n[{row['auc_ci_low']:.2f}, {row['auc_ci_high']:.2f}]"
    pick = f"\nchosen {row['times_chosen']}/{row['folds_chosen_from']}" if row["times_chosen"] else ""
    return f"{row['auc_mean']:.3f}{ci}{pick}"


def plot_recipes_heatmap(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Draw :func:`recipes_table` as one heatmap panel per (suffix, pooling, ensemble, cond_px)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from matplotlib.patches import Rectangle

    groups = list(table.groupby(["suffix", "pooling", "ensemble", "cond_px"], sort=True))
    n_rows = max(g["taps"].nunique() for _, g in groups)
    n_cols = max(g["timestep"].nunique() for _, g in groups)
    across = min(PANELS_ACROSS, len(groups))
    down = -(-len(groups) // across)
    fig, axes = plt.subplots(
        down,
        across,
        figsize=(across * (1.5 * n_cols + 2.6) + 1.2, down * (1.0 * n_rows + 1.2) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[len(groups) :]:
        ax.set_axis_off()
    cmap = matplotlib.colormaps["YlGnBu"].with_extremes(bad="#eeeeee")  # grey: no such candidate
    image = None
    for ax, ((suffix, pooling, ensemble, cond_px), g) in zip(axes.flat, groups):
        taps = sorted(g["taps"].unique(), key=lambda t: (len(json.loads(t)), t))
        steps = sorted(g["timestep"].unique())
        grid = np.full((len(taps), len(steps)), np.nan)
        for _, row in g.iterrows():
            i, j = taps.index(row["taps"]), steps.index(row["timestep"])
            grid[i, j] = row["auc_mean"]
            dark = not np.isnan(row["auc_mean"]) and row["auc_mean"] > 0.8  # white text on dark cells
            ax.text(
                j,
                i,
                _cell_text(row),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
            if row["times_chosen"]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="#d62728"))
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.5, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=8)
        ax.set_yticks(range(len(taps)), [" + ".join(json.loads(t)) for t in taps], fontsize=8)
        ax.set_xlabel("timestep t", fontsize=8)
        cond = f" · UNI at {cond_px} px" if int(cond_px) != 224 else ""
        ax.set_title(f"{suffix or 'set'} · pooling {pooling} · ensemble {ensemble}{cond}", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="test AUC (mean over folds)")
    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):  # the figure is made with layout="constrained"
        engine.set(h_pad=0.15)
    head = "Test AUC, mean [95% CI] over outer folds; outlined: chosen by nested selection (n/N folds)"
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def write_recipes_heatmap(
    out_dir: str | Path,
    folds: pd.DataFrame,
    *,
    sources: Mapping[str, Path],
    chosen: Mapping[str, int],
    n_choices: int,
    title: str = "",
) -> dict[str, Path]:
    """``recipes_heatmap.csv`` and ``.png`` for the candidates with recipe attributes (none: no files).

    Returns:
        ``{"recipes_heatmap_csv": path, "recipes_heatmap": path}`` or ``{}``.
    """
    table = recipes_table(folds, sources, chosen, n_choices)
    if table.empty:
        return {}
    out_dir = Path(out_dir)
    return {
        "recipes_heatmap_csv": write_csv(table, out_dir / "recipes_heatmap.csv"),
        "recipes_heatmap": plot_recipes_heatmap(table, out_dir / "recipes_heatmap.png", title),
    }
