"""Regression and survival benchmarks end to end (labels CSV + real HDF5 bags -> Benchmark -> CSVs):
a planted signal is found, a null cohort gives chance values with intervals that cover them."""

import numpy as np
import pandas as pd
import pytest
import torch

from zoomfeat.mil.benchmark import Benchmark
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection
from zoomfeat.mil.objectives import cox_loss

from .bagfactory import write_bags

N_CASES = 72
MIL = MILConfig(name="abmil", hidden=[16], att_dim=8, dropout=0.0, lr=3e-3, epochs=14, patience=5,
                min_epochs=6, warmup=2, amp=False, batch_size=4, survival_batch_size=16)  # fmt: skip


def cohort(seed: int = 0):
    """Bags whose instances' first feature is shifted by a latent u ~ N(0, 1) per patient (10-16
    instances of 6 features), the latent u, and the slide ids."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=N_CASES)
    feats, rows = {}, []
    for c in range(N_CASES):
        slide = f"case{c:03d}-DX1"
        x = rng.normal(size=(int(rng.integers(10, 17)), 6)).astype(np.float32)
        x[:, 0] += u[c]
        feats[slide] = x
        rows.append({"slide_id": slide, "case_id": f"case{c:03d}"})
    return pd.DataFrame(rows), feats, u, rng


def run(tmp_path, table: pd.DataFrame, feats, task: TaskSection) -> Benchmark:
    torch.set_num_threads(1)
    root = tmp_path / "bags"
    write_bags(root, "planted", feats)
    labels = tmp_path / "labels.csv"
    table.to_csv(labels, index=False)
    task.labels, task.bags = str(labels), str(root)
    cfg = BenchmarkConfig(task=task, mil=MIL, cv=CVSection(folds=3), feature_sets=["planted"], baseline=None,
                          out_dir=str(tmp_path / "out"), progress=False, bootstrap=300, save_attention=False)  # fmt: skip
    bench = Benchmark(cfg)
    bench.run()
    return bench


def read(tmp_path, name: str) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "out" / name)


@pytest.mark.parametrize("planted", [True, False], ids=["planted", "null"])
def test_regression(tmp_path, planted):
    table, feats, u, rng = cohort(1)
    # planted: target = 10 + 3u + N(0, 0.5^2) (R^2 ~ 0.97 reachable); null: independent of the bags
    target = 10 + 3 * (u if planted else rng.normal(size=N_CASES)) + rng.normal(scale=0.5, size=N_CASES)
    run(tmp_path, table.assign(hrd_score=target), feats,
        TaskSection(name="reg", type="regression", label_col="hrd_score"))  # fmt: skip
    pred = read(tmp_path, "predictions.csv")
    assert {"target", "pred", "aggregator", "seed"} <= set(pred.columns) and len(pred) == N_CASES
    folds = read(tmp_path, "folds.csv")
    assert {"r2", "pearson_r", "mae"} <= set(folds.columns)
    boot = read(tmp_path, "bootstrap.csv").set_index("metric")
    if planted:
        assert folds["r2"].mean() > 0.6 and boot.loc["r2", "estimate"] > 0.6, folds["r2"]
        assert boot.loc["pearson_r", "ci_low"] > 0.6
    else:  # chance: R^2 at most about 0, Pearson's r interval covers 0
        assert boot.loc["r2", "estimate"] < 0.1
        assert boot.loc["pearson_r", "ci_low"] < 0 < boot.loc["pearson_r", "ci_high"]
    assert (tmp_path / "out" / "scatter.png").stat().st_size > 0


@pytest.mark.parametrize("planted", [True, False], ids=["planted", "null"])
def test_survival(tmp_path, planted):
    table, feats, u, rng = cohort(2)
    # planted: hazard exp(1.5 u); null: hazard independent of the bags; censoring Exp(rate 0.3)
    risk = 1.5 * (u if planted else rng.normal(size=N_CASES))
    t_event = rng.exponential(1 / np.exp(risk))
    t_cens = rng.exponential(1 / 0.3, size=N_CASES)
    table = table.assign(
        os_days=np.minimum(t_event, t_cens) * 365 + 1, os_event=(t_event <= t_cens).astype(int)
    )
    bench = run(tmp_path, table, feats,
                TaskSection(name="surv", type="survival", time_col="os_days", event_col="os_event"))  # fmt: skip
    splits = read(tmp_path, "splits.csv")
    events = dict(zip(table["slide_id"], table["os_event"]))
    for _, f in splits[splits["part"] == "test"].groupby("fold"):  # stratified on events
        share = np.mean([events[s] for s in f["slide_id"]])
        assert abs(share - table["os_event"].mean()) < 0.15
    pred = read(tmp_path, "predictions.csv")
    assert {"time", "event", "risk"} <= set(pred.columns)
    folds = read(tmp_path, "folds.csv")
    boot = read(tmp_path, "bootstrap.csv").set_index("metric")
    logrank = read(tmp_path, "logrank.csv")
    assert len(read(tmp_path, "km.csv")) > 0
    if planted:
        assert folds["c_index"].mean() > 0.7 and folds["c_index_uno"].mean() > 0.65, folds
        assert boot.loc["c_index", "ci_low"] > 0.6
        assert logrank["p"].iloc[0] < 0.05
    else:  # chance: the C-index interval covers 0.5
        assert boot.loc["c_index", "ci_low"] < 0.5 < boot.loc["c_index", "ci_high"], boot
    assert bench.loop.records[0]["best_epoch"] >= 0


def test_cox_loss_matches_the_partial_likelihood_by_hand():
    """Breslow's partial likelihood with a tie, written out term by term (float32 at O(1): 1e-6)."""
    risk = torch.tensor([0.5, -0.2, 1.0, 0.3])
    time = torch.tensor([2.0, 3.0, 2.0, 5.0])
    event = torch.tensor([1.0, 0.0, 1.0, 1.0])
    r = risk.double()
    at_2 = torch.logsumexp(r, 0)  # everyone is at risk at t = 2 (the tie shares its risk set)
    at_5 = r[3]
    expected = -((r[0] - at_2) + (r[2] - at_2) + (r[3] - at_5)) / 3
    torch.testing.assert_close(cox_loss(risk, time, event).double(), expected, atol=1e-6, rtol=1e-6)
    assert float(cox_loss(risk, time, torch.zeros(4))) == 0.0
