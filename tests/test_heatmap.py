"""``python -m zoomfeat.heatmap``: attention from a bench run over a real (synthetic, openslide-read) slide."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mil.bagfactory import COORDS_ATTRS

from zoomfeat.bags import write_bag
from zoomfeat.heatmap import HeatmapConfig, attention_overlay, percentile_ranks, slide_heatmap
from zoomfeat.mil.report import write_attention
from zoomfeat.runtime.errors import InputError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_dir(synthetic_slide_factory, tmp_path_factory):
    """A bench out_dir with 20x (1024 px level-0 tiles on a 4096 px slide) and 5x (4096 px) attention."""
    slide = synthetic_slide_factory("heat", width=4096, height=4096)
    root = tmp_path_factory.mktemp("bench_run")
    xs = np.arange(0, 4096, 1024)
    coords20 = np.array([(x, y) for y in xs for x in xs], dtype=np.int64)
    logits20 = np.linspace(-2, 2, len(coords20))[::-1].copy()  # tile 0 (top-left) most attended
    write_attention(root / "attention" / "zoomldm_20x" / "repeat0_fold1.h5",
                    {"heat": {"attention_logits": logits20, "coords": coords20, "label": 1, "prob": 0.8}})  # fmt: skip
    write_attention(root / "attention" / "zoomldm_5x" / "repeat0_fold1.h5",
                    {"heat": {"attention_logits": np.zeros(1), "coords": np.zeros((1, 2), np.int64), "label": 1, "prob": 0.7}})  # fmt: skip
    # the 5x bag (one tile: its footprint can only come from the bag's patch_size_level0) and run.json
    bag_dir = root / "bags" / "features_zoomldm_5x"
    write_bag(bag_dir / "heat.h5", np.zeros((1, 4), np.float32), np.zeros((1, 2)),
              {**COORDS_ATTRS, "patch_size_level0": 4096})  # fmt: skip
    (root / "run.json").write_text(json.dumps({"sources": {"zoomldm_5x": str(bag_dir)}}))
    return slide, root, coords20


def test_ranks_and_overlay():
    assert percentile_ranks(np.array([0.1, 0.5, 0.3])).tolist() == pytest.approx([1 / 3, 1, 2 / 3])
    heat = attention_overlay(
        (8, 8), np.array([[0, 0], [512, 512]]), np.array([0.5, 1.0]), size0=512, dx=128, dy=128
    )
    assert (heat[:4, :4] == 0.5).all() and (heat[4:, 4:] == 1.0).all() and np.isnan(heat[0, 5])


def test_heatmap_png_with_top_tiles(bench_dir, tmp_path):
    slide, root, coords20 = bench_dir
    cfg = HeatmapConfig(bench_dir=str(root), top_k=3, out_dir=str(tmp_path), thumbnail_mpp=16.0)
    result = slide_heatmap(slide, cfg)
    assert result["path"] == tmp_path / "heat.png" and result["path"].stat().st_size > 20_000
    assert [t[:2] for t in result["top"]["zoomldm_20x"]] == [tuple(c) for c in coords20[:3]]
    from PIL import Image

    assert min(Image.open(result["path"]).size) > 300


def test_cli_errors_are_one_line(bench_dir, tmp_path):
    slide, root, _ = bench_dir
    env = {k: v for k, v in os.environ.items() if k != "ZOOMFEAT_DEBUG"}
    other = tmp_path / "other.svs"
    other.write_bytes(Path(slide).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "zoomfeat.heatmap", str(other), f"bench_dir={root}"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "zoomfeat heatmap: error:" in line]
    assert len(lines) == 1 and "slide 'other' is not a test slide of feature set 'zoomldm_20x'" in lines[0]
    with pytest.raises(InputError, match="no attention files"):
        slide_heatmap(slide, HeatmapConfig(bench_dir=str(root), feature_sets=["uni_20x"]))
