"""report.html opened in a real headless browser (Debian's chromium).

A real benchmark run on small planted bags (two feature sets, a baseline, attention saved), plus
per-slide heatmaps drawn from the run's own attention files, then its report.html is loaded by
chromium from a file:// URL:

* the rendered DOM holds every number of summary.csv and paired.csv, each equal to the CSV value
  formatted by the page's stated rule (``format(x, ".3f")``, counts as integers, p < 0.001 as
  ``<0.001``);
* no console message at all (an uncaught exception is logged as ``CONSOLE``); a deliberately broken
  copy of the page proves the check catches a thrown error;
* nothing is loaded from outside the page (every ``src``/``href`` is a ``data:`` URI or an anchor);
* the screenshot (1400 x 2000) is not blank and shows the dark header band, and a heatmap opened
  with its anchor (``#view-0``) covers the window with the dark backdrop.

Without chromium the test is skipped with the reason, except in CI (``CI`` set), where it fails:
``.ci/run`` installs chromium.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoomfeat.mil.attention import read_attention
from zoomfeat.mil.benchmark import run_benchmark
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection
from zoomfeat.mil.html_report import write_html_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1400, 2000)


def need_chromium() -> str:
    if CHROMIUM:
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs this test")


def chromium(url: str, tmp: Path, *args: str) -> tuple[str, list[str]]:
    """Run headless chromium on ``url``: (stdout, the console lines it logged)."""
    cmd = [
        need_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
        *args, url,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    return proc.stdout, console


class Numbers(HTMLParser):
    """``data-key`` -> text of every number on the page; every ``src``/``href`` value."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, list[str]] = {}
        self.links: list[str] = []
        self._key: str | None = None
        self.scripts_with_src = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[a] for a in ("src", "href") if a in attrs]
        if tag == "script" and "src" in attrs:
            self.scripts_with_src += 1
        if "data-key" in attrs:
            self._key = attrs["data-key"]
            self.values.setdefault(self._key, [])

    def handle_data(self, data):
        if self._key is not None:
            self.values[self._key].append(data)

    def handle_endtag(self, tag):
        if tag == "span" and self._key is not None:
            self.values[self._key] = ["".join(self.values[self._key])]
            self._key = None


def expected(value, column: str) -> str:
    """The page's stated rounding rule, written out independently of the page's code."""
    if pd.isna(value):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if column.startswith("p_") and value < 0.001:
        return "<0.001"
    return f"{float(value):.3f}"


@pytest.fixture(scope="module")
def run_dir(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "run"
    cfg = BenchmarkConfig(
        task=TaskSection(
            name="planted",
            bags=str(planted["root"]),
            labels=str(planted["labels"]),
            label_map={"IDC": 0, "ILC": 1},
        ),
        feature_sets=["noise", "good"],
        baseline="noise",
        out_dir=str(out),
        cv=CVSection(folds=3),
        mil=MILConfig(hidden=[16], att_dim=8, epochs=8, min_epochs=2, patience=3, warmup=0, lr=3e-3),
        progress=False,
        threads=1,
    )
    run_benchmark(cfg)
    # per-slide heatmaps of the run's own attention (what zoomfeat.heatmap adds to a run directory)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "heatmaps").mkdir()
    entries = read_attention(sorted((out / "attention" / "good").glob("*.h5"))[0])
    for slide, entry in list(entries.items())[:4]:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.scatter(entry["coords"][:, 0], entry["coords"][:, 1], c=entry["attention"], s=90, cmap="jet")
        ax.set_title(slide, fontsize=8)
        fig.savefig(out / "heatmaps" / f"{slide}.png", dpi=80)
        plt.close(fig)
    write_html_report(out)
    return out


def test_report_html_renders_the_csv_numbers_without_errors(run_dir, tmp_path):
    url = (run_dir / "report.html").as_uri()
    dom, console = chromium(url, tmp_path, "--dump-dom")
    assert console == [], console
    page = Numbers()
    page.feed(dom)
    assert "<h1>planted: abmil" in dom and "ROC" in dom
    # every number of summary.csv: the main table (mean, std, CI) and the full table (every column)
    summary = pd.read_csv(run_dir / "summary.csv")
    names = [c for c in summary.columns if not pd.api.types.is_numeric_dtype(summary[c])]
    numbers = [c for c in summary.columns if c not in names]
    assert names[:2] == ["feature_set", "metric"] and {"mean", "std", "ci_low", "ci_high", "n"} <= set(
        numbers
    )
    compared = 0
    for _, row in summary.iterrows():
        name = "|".join(str(row[c]) for c in names)
        for col in ("mean", "std", "ci_low", "ci_high"):  # the main table: mean ± std [ci_low, ci_high]
            assert page.values[f"summary|{name}|{col}"] == [expected(row[col], col)]
            compared += 1
        for col in numbers:  # the full table: every column
            key = f"summary-all|{name}|{col}"
            assert page.values[key] == [expected(row[col], col)], key
            compared += 1
    # every number of paired.csv, whatever its columns (the tests' p-values, wins/ties/losses ...);
    # a row is named by its text columns (feature_set, baseline, metric, and any the run adds)
    paired = pd.read_csv(run_dir / "paired.csv")
    p_names = [c for c in paired.columns if not pd.api.types.is_numeric_dtype(paired[c])]
    p_numbers = [c for c in paired.columns if c not in p_names]
    assert {"diff_mean", "p_corrected_t", "p_wilcoxon", "wins"} <= set(p_numbers)
    for _, row in paired.iterrows():
        for col in p_numbers:
            key = "paired|" + "|".join(str(row[c]) for c in p_names) + f"|{col}"
            assert page.values[key] == [expected(row[col], col)], key
            compared += 1
    assert compared == len(summary) * (4 + len(numbers)) + len(paired) * len(p_numbers)
    assert len([k for k in page.values if k.startswith("summary|")]) == len(summary) * 4
    # the run's sentences about seeds and tests (statistics.md), each on the page
    sentences = [ln[2:] for ln in (run_dir / "statistics.md").read_text().splitlines() if ln.startswith("- ")]
    assert sentences and all(
        f"<li>{html.escape(x, quote=False)}</li>" in dom for x in sentences
    )  # text as serialised
    # self-contained: nothing from a server or the network
    assert page.links and all(link.startswith(("data:", "#")) for link in page.links), page.links
    assert page.scripts_with_src == 0 and "<link" not in dom
    # the per-slide heatmaps: a thumbnail and a large view each
    assert len(re.findall(r'class="thumb" href="#view-\d+"', dom)) == 4
    assert len(re.findall(r'class="lightbox" id="view-\d+"', dom)) == 4


def test_report_html_screenshot_and_large_heatmap_view(run_dir, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    _, console = chromium(
        (run_dir / "report.html").as_uri(),
        tmp_path,
        f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    )
    assert console == [], console
    image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int64)
    assert image.shape == (WINDOW[1], WINDOW[0], 3)
    assert abs(image[20, 20] - np.array([0x20, 0x33, 0x4D])).max() <= 8  # the header band (#20334d)
    not_white = (image < 235).any(axis=2).mean()
    assert 0.03 < not_white < 0.6, not_white  # tables and curves on a white page, not blank, not black
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200  # drawn content, not a flat colour

    view = tmp_path / "view.png"
    _, console = chromium(
        (run_dir / "report.html").as_uri() + "#view-0",
        tmp_path,
        f"--screenshot={view}",
        "--window-size=1000,800",
    )
    assert console == [], console
    opened = np.asarray(Image.open(view).convert("RGB"), dtype=np.int64)
    # the large view covers the window: a dark backdrop (rgba(10,14,20,.92): ~30 over white) at the edges, the image inside
    edges = np.concatenate([opened[:, :40].reshape(-1, 3), opened[:, -40:].reshape(-1, 3)])
    assert edges.mean() < 45, edges.mean()
    centre = opened[300:500, 400:600]
    assert centre.mean() > 100, centre.mean()


def test_the_console_check_catches_a_page_that_throws(run_dir, tmp_path):
    broken = tmp_path / "broken.html"
    text = (run_dir / "report.html").read_text()
    broken.write_text(text.replace("</body>", "<script>window.reportNumbers.check();</script></body>"))
    _, console = chromium(broken.as_uri(), tmp_path, "--dump-dom")
    assert len(console) == 1 and "Uncaught TypeError" in console[0], console


def survival_cohort(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Planted survival data: hazard exp(z), exponential event times, independent censoring; two
    feature sets' out-of-fold risks (``good`` sees z with noise, ``noise`` sees nothing), 4 folds."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    event_time = rng.exponential(np.exp(-z))
    censor = rng.exponential(1.5, size=n)
    time, event = np.minimum(event_time, censor), (event_time <= censor).astype(int)
    rows = []
    for fs, risk in (("noise", rng.normal(size=n)), ("good", z + 0.3 * rng.normal(size=n))):
        for i in range(n):
            rows.append({"feature_set": fs, "repeat": 0, "fold": i % 4, "slide_id": f"s{i:03d}",
                         "case_id": f"c{i:03d}", "time": time[i], "event": event[i], "risk": risk[i]})  # fmt: skip
    return pd.DataFrame(rows)


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C by its definition: over comparable pairs (the earlier time is an event), the
    share where the earlier one has the higher risk (ties in risk count 1/2)."""
    num = den = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if event[i] and time[i] < time[j]:
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


def test_kaplan_meier_and_logrank_agree_with_scipy():
    from scipy import stats

    from zoomfeat.mil.html_report import kaplan_meier, logrank_p

    pred = survival_cohort()
    good = pred[pred["feature_set"] == "good"]
    t, e = good["time"].to_numpy(), good["event"].to_numpy().astype(bool)
    high = (good["risk"] > good["risk"].median()).to_numpy()

    def censored(mask):
        return stats.CensoredData(uncensored=t[mask & e], right=t[mask & ~e])

    # both sum ~100 float64 terms of size <= 1: agreement to 1e-9 relative leaves 6 orders of margin
    assert logrank_p(t, e, high) == pytest.approx(
        stats.logrank(censored(high), censored(~high)).pvalue, rel=1e-9
    )
    xs, ys = kaplan_meier(t[high], e[high])
    reference = stats.ecdf(censored(high)).sf.evaluate(xs[1:-1])
    np.testing.assert_allclose(ys[1:-1], reference, rtol=1e-12)
    assert logrank_p(t, e, high) < 1e-3  # the planted risk separates the groups


def test_a_survival_run_gets_kaplan_meier_curves(tmp_path):
    from zoomfeat.mil.metrics import summarize

    run = tmp_path / "run"
    run.mkdir()
    pred = survival_cohort()
    pred.to_csv(run / "predictions.csv", index=False)
    rows = []
    for fs, frame in pred.groupby("feature_set", sort=False):
        per_fold = [harrell_c(f["time"].to_numpy(), f["event"].to_numpy(), f["risk"].to_numpy())
                    for _, f in frame.groupby("fold")]  # fmt: skip
        rows.append({"feature_set": fs, "metric": "c_index", **summarize(per_fold)})
    summary = pd.DataFrame(rows)
    summary.to_csv(run / "summary.csv", index=False)
    summary = pd.read_csv(run / "summary.csv")
    path = write_html_report(run)
    dom, console = chromium(path.as_uri(), tmp_path, "--dump-dom")
    assert console == [], console
    assert "task type survival" in dom and "Kaplan-Meier curves" in dom and "ROC" not in dom
    page = Numbers()
    page.feed(dom)
    for _, row in summary.iterrows():
        for col in ("mean", "std", "ci_low", "ci_high"):
            assert page.values[f"summary|{row['feature_set']}|c_index|{col}"] == [expected(row[col], col)]
    assert summary.set_index("feature_set").loc["good", "mean"] > 0.65  # the planted signal is found
    # the page's log-rank p: high vs low risk split at each fold's median risk, as scipy computes it
    from scipy import stats

    for fs, frame in pred.groupby("feature_set"):
        high = (frame["risk"] > frame.groupby("fold")["risk"].transform("median")).to_numpy()
        t, e = frame["time"].to_numpy(), frame["event"].to_numpy().astype(bool)
        p = stats.logrank(
            stats.CensoredData(uncensored=t[high & e], right=t[high & ~e]),
            stats.CensoredData(uncensored=t[~high & e], right=t[~high & ~e]),
        ).pvalue
        assert f"{fs}: log-rank p {html.escape(expected(p, 'p_logrank'))}" in dom  # "<" serialised as &lt;


def test_a_regression_run_gets_predicted_against_true_plots(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(1)
    target = rng.normal(40, 15, size=60)  # e.g. an HRD score
    rows = [
        {"feature_set": fs, "aggregator": agg, "repeat": 0, "fold": i % 5, "slide_id": f"s{i:02d}",
         "target": target[i], "pred": target[i] + rng.normal(0, 5 if fs == "good" else 30)}
        for agg in ("abmil", "meanpool") for fs in ("noise", "good") for i in range(60)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(run / "predictions.csv", index=False)
    dom, console = chromium(write_html_report(run).as_uri(), tmp_path, "--dump-dom")
    assert console == [], console
    assert "task type regression" in dom and "Predicted vs true" in dom and "ROC" not in dom
    # one panel per aggregator, one point per prediction row
    assert dom.count("<svg") == 2 and dom.count("<circle") == len(rows)
    assert "Predicted vs true (aggregator abmil)" in dom and "Predicted vs true (aggregator meanpool)" in dom


def test_heatmaps_drawn_into_a_finished_run_redraw_its_report(run_dir, tmp_path, synthetic_slide_factory):
    """``python -m zoomfeat.heatmap`` drawing into a finished run's ``heatmaps/`` redraws its
    report.html, so the page's gallery shows the new heatmap (the gallery is in the HTML text: no
    browser needed); heatmaps drawn elsewhere leave the page as it was."""
    from dataclasses import asdict

    from zoomfeat.heatmap import HeatmapConfig, run

    bench = tmp_path / "run"
    shutil.copytree(run_dir, bench)
    entries = read_attention(sorted((bench / "attention" / "good").glob("*.h5"))[-1])
    slide_id = next(s for s in entries if not (bench / "heatmaps" / f"{s}.png").exists())
    slide = synthetic_slide_factory(slide_id, width=4096, height=4096)
    before = (bench / "report.html").read_text()
    thumbs = re.compile(r'class="thumb" href="#view-\d+"')
    assert len(thumbs.findall(before)) == 4 and slide_id not in before

    hm = HeatmapConfig(bench_dir=str(bench), slides=[str(slide)], feature_sets=["good"], top_k=2,
                       thumbnail_mpp=32.0, out_dir=str(tmp_path / "elsewhere"))  # fmt: skip
    run(asdict(hm))
    assert (tmp_path / "elsewhere" / f"{slide_id}.png").is_file()
    assert (bench / "report.html").read_text() == before

    hm.out_dir = None  # the default: {bench_dir}/heatmaps
    run(asdict(hm))
    after = (bench / "report.html").read_text()
    assert (bench / "heatmaps" / f"{slide_id}.png").is_file()
    assert len(thumbs.findall(after)) == 5 and slide_id in after
