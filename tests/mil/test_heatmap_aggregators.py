"""Heatmaps for every kind of aggregator and task: a real bench run (bags with coords on a real
openslide-read synthetic slide) saves instance scores and fold models; ``zoomfeat.heatmap`` draws
them from the saved scores and, recomputed, from the saved fold model and the bag: both agree."""

import numpy as np
import pandas as pd
import pytest
import torch

from zoomfeat.heatmap import HeatmapConfig, slide_heatmap
from zoomfeat.mil.attention import read_attention
from zoomfeat.mil.benchmark import Benchmark
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection

from .bagfactory import write_bags

N = 24


def small(name: str, arch: str) -> MILConfig:
    return MILConfig(name=name, arch=arch, hidden=[8], att_dim=8, heads=2, dropout=0.0, epochs=3, patience=3,
                     min_epochs=1, warmup=0, amp=False, survival_batch_size=8)  # fmt: skip


@pytest.mark.parametrize(
    "task_type,aggs",
    [
        ("classification", ("clam_sb", "maxpool")),
        ("regression", ("dsmil", "transmil")),
        ("survival", ("abmil", "meanpool")),
    ],  # fmt: skip
)
def test_heatmaps_from_scores_and_from_saved_models(tmp_path, synthetic_slide_factory, task_type, aggs):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    slides = [f"hm{c:02d}-DX1" for c in range(N)]
    feats = {s: rng.normal(size=(12, 5)).astype(np.float32) for s in slides}
    write_bags(tmp_path / "bags", "set", feats)
    table = pd.DataFrame({"slide_id": slides, "case_id": slides, "label": np.arange(N) % 2,
                          "score": rng.normal(size=N), "days": rng.uniform(10, 900, N),
                          "dead": (np.arange(N) % 3 > 0).astype(int)})  # fmt: skip
    table.to_csv(tmp_path / "labels.csv", index=False)
    task = TaskSection(name="hm", type=task_type, labels=str(tmp_path / "labels.csv"), bags=str(tmp_path / "bags"),
                       label_col="score" if task_type == "regression" else "label", time_col="days",
                       event_col="dead")  # fmt: skip
    out = tmp_path / "run"
    cfg = BenchmarkConfig(task=task, aggregators=[small(a, a) for a in aggs], cv=CVSection(folds=2),
                          feature_sets=["set"], baseline=None, out_dir=str(out), progress=False, bootstrap=0)  # fmt: skip
    Benchmark(cfg).run()
    slide = synthetic_slide_factory(slides[0], width=4096, height=4096)
    for agg in aggs:
        files = sorted((out / "attention" / "set" / agg).glob("repeat0_fold*.h5"))
        saved = {k: v for f in files for k, v in read_attention(f).items()}[slides[0]]
        draws = {}
        for source in ("attention", "model"):
            hm = HeatmapConfig(bench_dir=str(out), feature_sets=["set"], aggregator=agg, source=source, top_k=3,
                               out_dir=str(tmp_path / f"png_{agg}_{source}"), thumbnail_mpp=32.0)  # fmt: skip
            draws[source] = slide_heatmap(slide, hm)
            assert draws[source]["path"].stat().st_size > 0
        # the saved fold model and bag give back the saved scores' ranking (the same top tiles)
        top_saved, top_model = draws["attention"]["top"]["set"], draws["model"]["top"]["set"]
        assert [t[:2] for t in top_saved] == [t[:2] for t in top_model]
        kind = "attention" if agg in ("abmil", "clam_sb", "dsmil") else "gradient_x_input"
        with __import__("h5py").File(files[0], "r") as f:
            assert f.attrs["score_kind"] == kind
        assert len(saved["attention_logits"]) == 12
