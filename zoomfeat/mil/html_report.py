"""``report.html``: one self-contained page per benchmark run, read from the run's directory.

:func:`write_html_report` reads what a run left in its directory -- ``summary.csv``,
``paired.csv``, ``folds.csv``, ``predictions.csv``, ``per_class.csv``, ``confusion.csv``,
``selection.csv``, ``recipes_heatmap.csv``, ``run.json``, ``summary.md`` (title and notes), the
PNGs (``summary.png``, ``roc.png``, ``recipes_heatmap.png``, any other) and the per-slide heatmaps
under ``heatmaps/`` -- and writes one HTML file that needs no server and no network: CSS and a
few lines of JavaScript inline, images as ``data:`` URIs, curves as inline SVG.

The sentences of ``statistics.md`` (seed noise, bootstrap, Holm-adjusted tests) are listed under "In
plain words". Whatever columns the CSVs hold are shown (a table per file, every column; any other CSV of the
run, e.g. ``seeds.csv``, ``bootstrap.csv``, ``logrank.csv``, under "More results"); the summary is
also laid out as ``mean ± std [95% CI]`` per feature set and metric, one table per aggregator when
the summary has an ``aggregator`` column or names its cells ``{set} · {aggregator}``. The curves
follow the task type (``run.json``'s ``config.task.type``, else the prediction columns); a run
that drew its own ``km.png`` / ``scatter.png`` gets those instead of the page's own, so the page
quotes one log-rank p-value, the run's:

* classification (``label``, ``prob``): ROC curves of the pooled out-of-fold predictions (binary:
  one curve per set; k classes: one-vs-rest per class), ``TPR(t) = P(s >= t | y = 1)`` against
  ``FPR(t) = P(s >= t | y = 0)``;
* regression (``target`` and ``pred``/``prediction``): predicted against true values, with the
  line ``y = x``;
* survival (``time``, ``event``, ``risk``): Kaplan-Meier curves ``S(t) = prod_{t_i <= t} (1 - d_i / n_i)``
  of the high- and low-risk halves (split at the median predicted risk within each test fold, as
  each fold's model has its own risk scale), with the log-rank test
  ``chi2 = (sum_i (d_1i - E_1i))^2 / sum_i V_i``, ``E_1i = d_i n_1i / n_i``,
  ``V_i = d_i (n_1i / n_i)(1 - n_1i / n_i)(n_i - d_i) / (n_i - 1)``, one degree of freedom.

Rounding rule (stated on the page): every number from a CSV is shown as Python's
``format(x, ".3f")`` of the stored value (correctly rounded to 3 decimals); counts as integers;
p-values below 0.001 as ``<0.001``. Each such number carries ``data-key="{file}|{row key}|{column}"``
so a test (or a reader) can match it with its CSV cell.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.runtime.atomic import atomic_write_text

log = logging.getLogger(__name__)

#: metrics where a smaller mean is better (the summary's bold marks the best mean)
LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse", "brier", "ibs"})
#: the summary's statistics shown as ``mean ± std [ci_low, ci_high]``
STAT_COLUMNS = ("mean", "std", "ci_low", "ci_high")
#: CSVs of a run not shown as tables (the splits; curve points drawn as figures)
SKIPPED_CSV = frozenset({"splits", "km"})
#: rows shown of any other CSV
MAX_ROWS = 300
#: at most this many per-slide heatmaps are embedded (the rest are listed)
MAX_HEATMAPS = 120
THUMB_PX = 220
LARGE_PX = 1600
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")  # fmt: skip
ROUNDING = (
    "Every number from a CSV file is shown as Python's format(x, '.3f') of the stored value (correctly "
    "rounded to 3 decimals; counts as integers; p-values below 0.001 as <0.001), so it equals the CSV cell "
    "rounded to 3 decimals."
)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d232a;background:#fff}
header{background:#20334d;color:#fff;padding:18px 28px}header h1{margin:0;font-size:21px}
header p{margin:4px 0 0;color:#c9d6e6;font-size:13px}
nav{padding:8px 28px;background:#eef2f7;border-bottom:1px solid #d5dde8;font-size:13px}
nav a{margin-right:14px;color:#20334d}
main{padding:8px 28px 40px;max-width:1500px}
h2{font-size:18px;border-bottom:2px solid #20334d;padding-bottom:3px;margin-top:30px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d5dde8;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#eef2f7}td.k,th.k{text-align:left}
tr.best td{font-weight:600}
.ci{color:#5b6b7e;font-size:12px}.note{color:#44505e;font-size:13px}
.scroll{overflow-x:auto;max-width:100%}
.plots{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0}figcaption{font-size:12px;color:#44505e;max-width:640px}
img.figure{max-width:min(100%,880px);border:1px solid #d5dde8}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.thumb{display:block;width:226px;text-decoration:none;color:#1d232a;font-size:12px;text-align:center}
.thumb img{width:220px;height:auto;border:3px solid #d5dde8}.thumb:hover img{border-color:#20334d}
.lightbox{display:none;position:fixed;inset:0;background:rgba(10,14,20,.92);z-index:10;align-items:center;justify-content:center}
.lightbox:target{display:flex}
.lightbox .close{position:absolute;inset:0}
.lightbox figure{position:relative;max-width:94vw;max-height:94vh;text-align:center}
.lightbox img{width:90vw;height:84vh;object-fit:contain}
.lightbox figcaption{color:#fff;max-width:none;font-size:14px}
details{margin:8px 0}summary{cursor:pointer;color:#20334d}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px}
td.cm{min-width:42px}
"""

#: Escape closes an open heatmap view (the view itself is CSS ``:target``, no script needed)
SCRIPT = """
document.addEventListener("keydown", function (event) {
  if (event.key === "Escape" && location.hash.indexOf("#view-") === 0) { location.hash = "#heatmaps"; }
});
"""


# ---------------------------------------------------------------------------------- numbers
def fmt_number(value: Any, *, column: str = "") -> str:
    """A CSV value as the page shows it (the module's rounding rule)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if column.startswith("p_") or column == "p":
            return "<0.001" if x < 0.001 else f"{x:.3f}"
        return f"{x:.3f}"
    return str(value)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(value: Any, key: str, column: str) -> str:
    return f'<span data-key="{_e(key)}">{_e(fmt_number(value, column=column))}</span>'


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"slide_id": str, "case_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        warnings.warn(f"{path}: not readable for report.html ({err}); left out", stacklevel=2)
        return None
    return frame


def key_columns(frame: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """The columns that name a row (text columns, plus repeat/fold/seed/class), not measure it."""
    named = ("repeat", "fold", "seed", "class")
    skip = set(exclude)
    return [
        c
        for c in frame.columns
        if c not in skip and (c in named or not pd.api.types.is_numeric_dtype(frame[c]))
    ]


def row_key(row: pd.Series, keys: Sequence[str]) -> str:
    """The ``|``-joined key values of a row (the middle part of ``data-key``)."""
    return "|".join(str(row[k]) for k in keys)


def table_html(frame: pd.DataFrame, name: str, *, keys: Sequence[str] | None = None) -> str:
    """Every row and column of one CSV as an HTML table; numbers carry ``data-key``."""
    keys = list(keys) if keys is not None else key_columns(frame)
    head = "".join(f'<th class="{"k" if c in keys else ""}">{_e(c)}</th>' for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        rk = row_key(row, keys)
        cells = []
        for c in frame.columns:
            v = row[c]
            if c in keys or not pd.api.types.is_numeric_dtype(frame[c]):
                cells.append(f'<td class="k">{_e(v)}</td>')
            else:
                cells.append(f"<td>{_num(v, f'{name}|{rk}|{c}', c)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table data-file="{_e(name)}"><tr>{head}</tr>{"".join(rows)}</table></div>'


# ---------------------------------------------------------------------------------- summary
def summary_section(summary: pd.DataFrame) -> str:
    """``mean ± std [ci_low, ci_high]`` per (feature set [, aggregator]) and metric, the best mean
    per metric in bold; one table per aggregator when the summary has that column."""
    all_keys = key_columns(summary)
    keys = [k for k in all_keys if k != "metric"]
    group = next((c for c in ("aggregator", "mil") if c in keys), None)
    shown = summary
    names = summary["feature_set"].astype(str) if "feature_set" in summary else None
    if group is None and names is not None and len(names) and names.str.contains(" · ", regex=False).all():
        # cells named "{set} · {aggregator}" (several aggregators): one table per aggregator
        parts_ = names.str.rsplit(" · ", n=1)
        shown = summary.assign(feature_set=parts_.str[0], aggregator=parts_.str[1])
        group = "aggregator"
    row_keys = [k for k in keys if k != group]
    metrics = list(dict.fromkeys(summary["metric"]))
    parts = []
    groups = [(None, shown)] if group is None else list(shown.groupby(group, sort=False))
    for name, frame in groups:
        if name is not None:
            parts.append(f"<h3>Aggregator: {_e(name)}</h3>")
        best = {
            m: (min if m in LOWER_IS_BETTER else max)(
                frame.loc[frame["metric"] == m, "mean"].dropna(), default=None
            )
            for m in metrics
        }
        head = "".join(f'<th class="k">{_e(k)}</th>' for k in row_keys) + "".join(
            f"<th>{_e(m)}</th>" for m in metrics
        )
        rows = []
        for ident, sub in frame.groupby(row_keys, sort=False):
            ident = ident if isinstance(ident, tuple) else (ident,)
            cells = "".join(f'<td class="k">{_e(v)}</td>' for v in ident)
            for m in metrics:
                hit = sub[sub["metric"] == m]
                if hit.empty:
                    cells += "<td>–</td>"
                    continue
                r = hit.iloc[0]
                rk = f"summary|{row_key(summary.loc[hit.index[0]], all_keys)}"  # the CSV's own key
                stats = {c: _num(r[c], f"{rk}|{c}", c) for c in STAT_COLUMNS if c in r}
                bold = len(sub) and len(frame) > len(sub) and r["mean"] == best[m]
                text = (
                    f"{stats.get('mean', '')} ± {stats.get('std', '')}"
                    f'<br><span class="ci">[{stats.get("ci_low", "")}, {stats.get("ci_high", "")}]</span>'
                )
                cells += f"<td>{'<b>' + text + '</b>' if bold else text}</td>"
            rows.append(f"<tr>{cells}</tr>")
        parts.append(
            f'<div class="scroll"><table class="summary"><tr>{head}</tr>{"".join(rows)}</table></div>'
        )
    n = int(summary["n"].max()) if "n" in summary and len(summary) else 0
    parts.append(
        f'<p class="note">Mean ± standard deviation over {n} test folds, 95% interval of the mean in '
        "brackets (summary.csv's ci_low, ci_high); best mean per metric in bold.</p>"
        "<details><summary>summary.csv (every column)</summary>"
        + table_html(summary, "summary-all", keys=all_keys)
        + "</details>"
    )
    return "".join(parts)


# ---------------------------------------------------------------------------------- SVG plots
def svg_plot(
    series: Sequence[dict[str, Any]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    diagonal: bool = False,
    legend: str = "top left",
) -> str:
    """A small inline SVG chart. Each series: ``label``, ``x``, ``y``, ``kind`` (``line``, ``step``
    or ``points``), optional ``color``; the legend in a corner (``top left``, ``bottom right``,
    ``bottom left``) on a white box."""
    w, h, left, right, top, bottom = 460, 400, 56, 12, 28, 46
    pw, ph = w - left - right, h - top - bottom
    x0, x1 = xlim
    y0, y1 = ylim
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{_e(title)}" font-family="sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#888"/>',
        f'<text x="{w / 2}" y="17" text-anchor="middle" font-size="13">{_e(title)}</text>',
        f'<text x="{left + pw / 2}" y="{h - 8}" text-anchor="middle">{_e(xlabel)}</text>',
        f'<text transform="translate(14,{top + ph / 2}) rotate(-90)" text-anchor="middle">{_e(ylabel)}</text>',
    ]
    for t in np.linspace(0, 1, 6):
        xv, yv = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        out.append(f'<line x1="{sx(xv):.1f}" y1="{top}" x2="{sx(xv):.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<line x1="{left}" y1="{sy(yv):.1f}" x2="{left + pw}" y2="{sy(yv):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle">{xv:.3g}</text>')
        out.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    if diagonal:
        lo, hi = max(x0, y0), min(x1, y1)
        out.append(
            f'<line x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" y2="{sy(hi):.1f}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
        )
    for i, s in enumerate(series):
        color = s.get("color") or PALETTE[i % len(PALETTE)]
        xs, ys = np.asarray(s["x"], float), np.asarray(s["y"], float)
        if s.get("kind") == "points":
            for xv, yv in zip(xs, ys):
                out.append(
                    f'<circle cx="{sx(xv):.1f}" cy="{sy(yv):.1f}" r="2.6" fill="{color}" fill-opacity="0.55"/>'
                )
        else:
            if s.get("kind") == "step" and len(xs):
                xs, ys = np.repeat(xs, 2)[1:], np.repeat(ys, 2)[:-1]
            pts = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(xs, ys))
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.8"/>')
    box_w = 14 + 6.2 * max((len(str(s["label"])) for s in series), default=0)
    box_h = 6 + 15 * len(series)
    bx = left + 4 if "left" in legend else left + pw - 4 - box_w
    by = top + 4 if "top" in legend else top + ph - 4 - box_h
    out.append(
        f'<rect x="{bx:.1f}" y="{by:.1f}" width="{box_w:.1f}" height="{box_h}" fill="#fff" '
        'fill-opacity="0.9" stroke="#ccc"/>'
    )
    for i, s in enumerate(series):
        color = s.get("color") or PALETTE[i % len(PALETTE)]
        ly = by + 14 + 15 * i
        out.append(f'<rect x="{bx + 4:.1f}" y="{ly - 9:.1f}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{bx + 18:.1f}" y="{ly:.1f}">{_e(s["label"])}</text>')
    out.append("</svg>")
    return "".join(out)


def _panels(predictions: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per aggregator (when there is that column), else one for the whole table."""
    for col in ("aggregator", "mil"):
        if col in predictions:
            return [(f"{col} {name}", frame) for name, frame in predictions.groupby(col, sort=False)]
    return [("", predictions)]


def roc_svgs(predictions: pd.DataFrame, class_names: Sequence[str] | None) -> list[str]:
    """ROC curves of the pooled out-of-fold predictions (module docstring)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    prob_cols = sorted(
        (c for c in predictions if c.startswith("prob_")), key=lambda c: int(c[5:]) if c[5:].isdigit() else 0
    )
    k = len(prob_cols) if len(prob_cols) > 2 else 2
    names = list(class_names) if class_names and len(class_names) == k else [str(c) for c in range(k)]
    svgs = []
    for panel, frame in _panels(predictions):
        sets = list(dict.fromkeys(frame["feature_set"]))
        groups = [(None, sets)] if k == 2 else [(fs, [fs]) for fs in sets]
        for fs_panel, members in groups:
            series = []
            for fs in members:
                pred = frame[frame["feature_set"] == fs]
                y = pred["label"].to_numpy(dtype=np.int64)
                for c in [1] if k == 2 else range(k):
                    score = pred["prob"].to_numpy(float) if k == 2 else pred[f"prob_{c}"].to_numpy(float)
                    pos = y == c
                    if not 0 < pos.sum() < len(pos):
                        continue
                    fpr, tpr, _ = roc_curve(pos, score)
                    label = fs if k == 2 else f"{names[c]} vs rest"
                    auc = roc_auc_score(pos, score)
                    series.append(
                        {"label": f"{label} (pooled AUC {auc:.3f})", "x": fpr, "y": tpr, "kind": "line"}
                    )
            if series:
                title = "ROC" + (f", {fs_panel}" if fs_panel else f", positive class {names[1]}")
                title += f" ({panel})" if panel else ""
                svgs.append(
                    svg_plot(
                        series,
                        title=title,
                        xlabel="False positive rate",
                        ylabel="True positive rate",
                        xlim=(0, 1),
                        ylim=(0, 1),
                        diagonal=True,
                        legend="bottom right",
                    )  # fmt: skip
                )
    return svgs


def scatter_svgs(predictions: pd.DataFrame) -> list[str]:
    """Predicted against true values, one panel per aggregator, a colour per feature set."""
    pred_col = "pred" if "pred" in predictions else "prediction"
    svgs = []
    for panel, frame in _panels(predictions):
        t = frame["target"].to_numpy(float)
        p = frame[pred_col].to_numpy(float)
        ok = np.isfinite(t) & np.isfinite(p)
        if not ok.any():
            continue
        lo, hi = float(min(t[ok].min(), p[ok].min())), float(max(t[ok].max(), p[ok].max()))
        series = []
        for fs in dict.fromkeys(frame["feature_set"]):
            sub = frame[frame["feature_set"] == fs]
            series.append(
                {"label": str(fs), "x": sub["target"].to_numpy(float), "y": sub[pred_col].to_numpy(float), "kind": "points"}
            )  # fmt: skip
        title = "Predicted vs true" + (f" ({panel})" if panel else "")
        svgs.append(
            svg_plot(
                series,
                title=title,
                xlabel="true value",
                ylabel="predicted value",
                xlim=(lo, hi),
                ylim=(lo, hi),
                diagonal=True,
            )  # fmt: skip
        )
    return svgs


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Product-limit estimate ``S(t) = prod_{t_i <= t} (1 - d_i / n_i)`` at 0 and each event time."""
    order = np.argsort(time, kind="stable")
    time, event = time[order], event[order].astype(bool)
    xs, ys, s = [0.0], [1.0], 1.0
    for t in np.unique(time[event]):
        at_risk = int((time >= t).sum())
        deaths = int(((time == t) & event).sum())
        s *= 1.0 - deaths / at_risk
        xs.append(float(t))
        ys.append(s)
    if len(time):
        xs.append(float(time.max()))
        ys.append(s)
    return np.asarray(xs), np.asarray(ys)


def logrank_p(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> float:
    """Two-group log-rank test (module docstring); NaN when it is undefined."""
    from scipy.stats import chi2

    event = event.astype(bool)
    obs_minus_exp, var = 0.0, 0.0
    for t in np.unique(time[event]):
        at_risk = time >= t
        n, n1 = int(at_risk.sum()), int((at_risk & group).sum())
        d = int(((time == t) & event).sum())
        d1 = int(((time == t) & event & group).sum())
        obs_minus_exp += d1 - d * n1 / n
        if n > 1:
            var += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    return float(chi2.sf(obs_minus_exp**2 / var, 1)) if var > 0 else float("nan")


def km_svgs(predictions: pd.DataFrame) -> list[str]:
    """Kaplan-Meier curves of the predicted high- and low-risk halves, one panel per set."""
    fold_cols = [c for c in ("aggregator", "seed", "repeat", "fold") if c in predictions]
    svgs = []
    for panel, frame in _panels(predictions):
        for fs in dict.fromkeys(frame["feature_set"]):
            sub = frame[frame["feature_set"] == fs].copy()
            median = sub.groupby(fold_cols)["risk"].transform("median") if fold_cols else sub["risk"].median()
            high = (sub["risk"] > median).to_numpy()
            time, event = sub["time"].to_numpy(float), sub["event"].to_numpy(float) > 0
            series = []
            for name, mask, color in (("low risk", ~high, "#1f77b4"), ("high risk", high, "#d62728")):
                xs, ys = kaplan_meier(time[mask], event[mask])
                series.append(
                    {
                        "label": f"{name} (n={int(mask.sum())})",
                        "x": xs,
                        "y": ys,
                        "kind": "step",
                        "color": color,
                    }
                )
            p = logrank_p(time, event, high)
            title = f"{fs}{f' ({panel})' if panel else ''}: log-rank p {fmt_number(p, column='p')}"
            svgs.append(
                svg_plot(
                    series,
                    title=title,
                    xlabel="time",
                    ylabel="survival probability",
                    xlim=(0, float(np.nanmax(time)) if len(time) else 1.0),
                    ylim=(0, 1),
                    legend="bottom left",
                )  # fmt: skip
            )
    return svgs


def task_type(run_info: dict[str, Any], predictions: pd.DataFrame | None) -> str:
    """``classification``, ``regression`` or ``survival``: run.json's ``config.task.type``, else
    from the prediction columns."""
    declared = ((run_info.get("config") or {}).get("task") or {}).get("type")
    if declared in ("classification", "regression", "survival"):
        return str(declared)
    cols = set(predictions.columns) if predictions is not None else set()
    if {"risk", "time", "event"} <= cols:
        return "survival"
    if "target" in cols:
        return "regression"
    return "classification"


# ---------------------------------------------------------------------------------- images
def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _resized(path: Path, max_px: int, fmt: str) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if max(im.size) > max_px:
            im.thumbnail((max_px, max_px))
        if fmt == "JPEG":
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {"optimize": True}))
        return buf.getvalue()


def figure_html(path: Path, caption: str) -> str:
    """One PNG of the run, embedded as it is."""
    return (
        f'<figure><img class="figure" alt="{_e(path.name)}" src="{_data_uri(path.read_bytes())}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def gallery_html(run_dir: Path) -> str:
    """Per-slide heatmap thumbnails under ``heatmaps/``; a click opens the large view (CSS
    ``:target``), a click on the backdrop or Escape closes it."""
    files = sorted((run_dir / "heatmaps").rglob("*.png")) if (run_dir / "heatmaps").is_dir() else []
    if not files:
        return '<p class="note">No per-slide heatmaps in this run (draw them with python -m zoomfeat.heatmap).</p>'
    thumbs, views = [], []
    for i, path in enumerate(files[:MAX_HEATMAPS]):
        name = str(path.relative_to(run_dir / "heatmaps").with_suffix(""))
        thumbs.append(
            f'<a class="thumb" href="#view-{i}"><img alt="{_e(name)}" src="{_data_uri(_resized(path, THUMB_PX, "JPEG"), "image/jpeg")}">'
            f"<br>{_e(name)}</a>"
        )
        views.append(
            f'<div class="lightbox" id="view-{i}"><a class="close" href="#heatmaps" aria-label="close"></a>'
            f'<figure><img alt="{_e(name)}" src="{_data_uri(_resized(path, LARGE_PX, "PNG"))}">'
            f"<figcaption>{_e(name)} (click outside or press Escape to close)</figcaption></figure></div>"
        )
    more = (
        f'<p class="note">{len(files) - MAX_HEATMAPS} more heatmaps in heatmaps/ are not embedded.</p>'
        if len(files) > MAX_HEATMAPS
        else ""
    )
    return f'<div class="gallery">{"".join(thumbs)}</div>{more}{"".join(views)}'


# ---------------------------------------------------------------------------------- the page
def _title_and_notes(run_dir: Path) -> tuple[str, list[str]]:
    md = run_dir / "summary.md"
    if not md.is_file():
        return run_dir.name, []
    lines = md.read_text(encoding="utf-8").splitlines()
    title = lines[0].lstrip("# ").strip() if lines else run_dir.name
    return title, [ln[2:] for ln in lines if ln.startswith("- ")]


def confusion_html(confusion: pd.DataFrame) -> str:
    """Confusion matrices, one per feature set (rows true, columns predicted), cells shaded by
    their share of the row."""
    keys = key_columns(confusion)
    pred_cols = [c for c in confusion.columns if c.startswith("pred ")]
    set_keys = [k for k in keys if k != "true"]
    parts = []
    for ident, frame in confusion.groupby(set_keys, sort=False):
        ident = ident if isinstance(ident, tuple) else (ident,)
        head = "<th class='k'>true \\ predicted</th>" + "".join(f"<th>{_e(c[5:])}</th>" for c in pred_cols)
        rows = []
        for _, r in frame.iterrows():
            total = max(int(sum(int(r[c]) for c in pred_cols)), 1)
            cells = "".join(
                f'<td class="cm" style="background:rgba(32,51,77,{0.08 + 0.6 * int(r[c]) / total:.2f});'
                f'color:{"#fff" if int(r[c]) / total > 0.6 else "#1d232a"}">{_num(r[c], f"confusion|{row_key(r, keys)}|{c}", c)}</td>'
                for c in pred_cols
            )
            rows.append(f"<tr><td class='k'>{_e(r['true'])}</td>{cells}</tr>")
        parts.append(
            f"<figure><figcaption>{_e(' / '.join(map(str, ident)))}</figcaption>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table></figure>"
        )
    return f'<div class="plots">{"".join(parts)}</div>'


def render_html(run_dir: str | Path) -> str:
    """The page of the run in ``run_dir`` (module docstring), as a string."""
    run_dir = Path(run_dir)
    run_info: dict[str, Any] = {}
    if (run_dir / "run.json").is_file():
        run_info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    title, notes = _title_and_notes(run_dir)
    csv = {name: _read_csv(run_dir / f"{name}.csv") for name in
           ("summary", "paired", "folds", "predictions", "per_class", "confusion", "selection", "recipes_heatmap",
            "paper_table")}  # fmt: skip
    predictions = csv["predictions"]
    kind = task_type(run_info, predictions)
    sections: list[tuple[str, str, str]] = []  # (id, heading, html)

    if csv["summary"] is not None and len(csv["summary"]):
        sections.append(("summary", "Summary", summary_section(csv["summary"])))
    if csv["paired"] is not None and len(csv["paired"]):
        base = (
            ", ".join(map(str, dict.fromkeys(csv["paired"]["baseline"])))
            if "baseline" in csv["paired"]
            else ""
        )
        sections.append(
            ("tests", f"Paired tests against {base}" if base else "Paired tests",
             table_html(csv["paired"], "paired", keys=key_columns(csv["paired"]))
             + '<p class="note">diff = feature set minus baseline over the same folds; p_* columns are the '
             "tests' two-sided p-values as paired.csv holds them (see summary.md for each test).</p>")
        )  # fmt: skip
    stats_md = run_dir / "statistics.md"
    if stats_md.is_file():  # the run's sentences on seeds, bootstrap and tests (zoomfeat.mil.stats)
        text = stats_md.read_text(encoding="utf-8")
        words = "".join(f"<li>{_e(ln[2:])}</li>" for ln in text.splitlines() if ln.startswith("- "))
        sections.append(
            ("words", "In plain words", f"<ul class='note'>{words}</ul><details><summary>statistics.md</summary>"
             f"<pre>{_e(text)}</pre></details>")
        )  # fmt: skip
    plots: list[str] = []
    if predictions is not None and len(predictions):
        # the run's own km.png (+ logrank.csv) / scatter.png, when the benchmark drew them, are shown
        # under Figures instead, so the page quotes one log-rank p-value: the CSV's
        if kind == "survival" and {"risk", "time", "event"} <= set(predictions.columns):
            plots = [] if (run_dir / "km.png").is_file() else km_svgs(predictions)
        elif kind == "regression" and "target" in predictions:
            plots = [] if (run_dir / "scatter.png").is_file() else scatter_svgs(predictions)
        elif {"label", "prob"} <= set(predictions.columns):
            plots = roc_svgs(predictions, ((run_info.get("cohort") or {}).get("classes")))
    heading = {
        "classification": "ROC curves",
        "regression": "Predicted vs true",
        "survival": "Kaplan-Meier curves",
    }
    if plots:
        sections.append(("curves", heading[kind], f'<div class="plots">{"".join(plots)}</div>'
                         '<p class="note">Pooled out-of-fold test predictions (predictions.csv).</p>'))  # fmt: skip
    figures = [
        figure_html(run_dir / name, caption)
        for name, caption in (
            ("summary.png", "summary.png: each metric per set, mean with 95% CI, folds as dots"),
            ("roc.png", "roc.png: ROC curves"),
        )  # fmt: skip
        if (run_dir / name).is_file() and not (plots and name == "roc.png")  # roc.png = the curves above
    ]
    known = {"summary.png", "roc.png", "recipes_heatmap.png"}
    figures += [figure_html(p, p.name) for p in sorted(run_dir.glob("*.png")) if p.name not in known]
    if figures:
        sections.append(("figures", "Figures", f'<div class="plots">{"".join(figures)}</div>'))
    if csv["confusion"] is not None and len(csv["confusion"]):
        sections.append(("confusion", "Confusion matrices", confusion_html(csv["confusion"])))
    if csv["per_class"] is not None and len(csv["per_class"]):
        sections.append(("per_class", "Per class", table_html(csv["per_class"], "per_class")))
    recipe = ""
    if (run_dir / "recipes_heatmap.png").is_file():
        recipe += figure_html(run_dir / "recipes_heatmap.png", "recipes_heatmap.png: test AUC per recipe")
    for name in ("selection", "recipes_heatmap"):
        frame = csv[name]
        if frame is not None and len(frame):
            recipe += f"<h3>{name}.csv</h3>" + table_html(frame, name)
    if recipe:
        sections.append(("recipes", "Recipe heatmap and selection", recipe))
    if csv["paper_table"] is not None and len(csv["paper_table"]):
        sections.append(("paper", "Paper table", table_html(csv["paper_table"], "paper_table")))
    more = ""
    for path in sorted(run_dir.glob("*.csv")):
        frame = _read_csv(path) if path.stem not in csv and path.stem not in SKIPPED_CSV else None
        if frame is None or not len(frame):
            continue
        note = f'<p class="note">first {MAX_ROWS} of {len(frame)} rows</p>' if len(frame) > MAX_ROWS else ""
        more += (
            f"<details{' open' if len(frame) <= 30 else ''}><summary>{_e(path.name)} ({len(frame)} rows)</summary>"
            f"{table_html(frame.head(MAX_ROWS), path.stem)}{note}</details>"
        )
    if more:
        sections.append(("more", "More results", more))
    sections.append(("heatmaps", "Per-slide heatmaps", gallery_html(run_dir)))
    if csv["folds"] is not None and len(csv["folds"]):
        sections.append(("folds", "Per fold", "<details><summary>folds.csv (every fold)</summary>"
                         + table_html(csv["folds"], "folds") + "</details>"))  # fmt: skip
    about = "".join(f"<li>{_e(n)}</li>" for n in notes)
    about += f"<li>{_e(ROUNDING)}</li>"
    if run_info:
        about += (
            f"<li>Task type: {_e(kind)}; device {_e(run_info.get('device', '?'))}; "
            f"{_e(run_info.get('seconds', '?'))} s; versions {_e(run_info.get('versions', {}))}.</li>"
            f"<details><summary>run.json</summary><pre>{_e(json.dumps(run_info, indent=2))}</pre></details>"
        )
    sections.append(("about", "About this run", f"<ul class='note'>{about}</ul>"))

    nav = "".join(f'<a href="#{sid}">{_e(head)}</a>' for sid, head, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{_e(head)}</h2>{content}</section>' for sid, head, content in sections
    )
    cohort = run_info.get("cohort") or {}
    sub = (
        f"{cohort.get('slides', '?')} slides, {cohort.get('patients', '?')} patients"
        if cohort
        else str(run_dir)
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(sub)} · task type {_e(kind)}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main><script>{SCRIPT}</script></body></html>\n"
    )


def write_html_report(run_dir: str | Path, *, path: str | Path | None = None) -> Path:
    """Write ``report.html`` (default ``{run_dir}/report.html``) from the run's files.

    Args:
        run_dir: a benchmark run's directory (``zoomfeat.bench``'s ``out_dir``).
        path: where to write the page.

    Returns:
        The page's path.
    """
    run_dir = Path(run_dir)
    target = Path(path) if path is not None else run_dir / "report.html"
    return atomic_write_text(target, render_html(run_dir))


def write_html_report_safely(run_dir: str | Path) -> dict[str, Path]:
    """:func:`write_html_report`, but a page that cannot be drawn is a warning, not a lost run
    (the CSVs and PNGs stay complete): ``{"html": path}`` or ``{}``."""
    try:
        return {"html": write_html_report(run_dir)}
    except Exception as err:  # noqa: BLE001 - the run's numbers must survive a drawing bug
        log.warning(
            "report.html could not be written (%s: %s); the CSV and PNG outputs are complete",
            type(err).__name__,
            err,
            exc_info=True,
        )
        return {}
