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
    compared = 0
    for _, row in summary.iterrows():
        for col in ("mean", "std", "ci_low", "ci_high"):
            assert page.values[f"summary|{row['feature_set']}|{row['metric']}|{col}"] == [
                expected(row[col], col)
            ]
            compared += 1
        for col in summary.columns[2:]:
            key = f"summary-all|{row['feature_set']}|{row['metric']}|{col}"
            assert page.values[key] == [expected(row[col], col)], key
            compared += 1
    paired = pd.read_csv(run_dir / "paired.csv")
    for _, row in paired.iterrows():
        for col in ("diff_mean", "t", "p_corrected_t", "p_wilcoxon", "wins", "ties", "losses", "n"):
            assert page.values[f"paired|{row['feature_set']}|{row['baseline']}|{row['metric']}|{col}"] == [
                expected(row[col], col)
            ]
            compared += 1
    assert compared == len(summary) * (4 + len(summary.columns) - 2) + len(paired) * 8
    assert len([k for k in page.values if k.startswith("summary|")]) == len(summary) * 4
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
    # the large view covers the window: a dark backdrop (rgba(10,14,20,.88)) at the edges, the image inside
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
