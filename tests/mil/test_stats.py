"""zoomfeat.mil.stats: DeLong (exact against the O(mn) definition, calibrated under the null, sharp on a
planted difference), Holm, the patient-level bootstrap, seed spread and the paired cells."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from zoomfeat.mil.stats import (
    bootstrap_ci,
    delong_test,
    fast_auc,
    fast_harrell_c,
    holm,
    paired_cells,
    pooled_metrics,
    seed_table,
)


def delong_by_definition(y, a, b):
    """DeLong et al. (1988) written out with the O(mn) kernel psi (the reference for the fast one)."""
    y = np.asarray(y)
    out = []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        out.append((psi.mean(), psi.mean(1), psi.mean(0)))
    m, n = (y == 1).sum(), (y == 0).sum()
    s10 = np.cov(np.vstack([out[0][1], out[1][1]]))
    s01 = np.cov(np.vstack([out[0][2], out[1][2]]))
    cov = s10 / m + s01 / n
    z = (out[0][0] - out[1][0]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return out[0][0], out[1][0], 2 * norm.sf(abs(z))


def test_fast_delong_equals_the_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    a = np.round(y + rng.normal(size=60), 1)  # rounded: many ties
    b = np.round(0.5 * y + rng.normal(size=60), 1)
    got = delong_test(y, a, b)
    auc_a, auc_b, p = delong_by_definition(y, a, b)
    # AUCs are sums of O(m n) halves (exact in float64); the p-value goes through the same
    # covariances in another order: 1e-10
    assert got["auc_a"] == pytest.approx(auc_a, abs=1e-12) and got["auc_b"] == pytest.approx(auc_b, abs=1e-12)
    assert got["p"] == pytest.approx(p, abs=1e-10)
    assert got["auc_a"] == pytest.approx(fast_auc(y, a), abs=1e-12)


def test_delong_is_calibrated_under_the_null_and_finds_a_planted_difference():
    """200 simulated null pairs (two equally informative, independent noisy scores of the same 120
    bags): the false-positive rate at 0.05 stays within the binomial 99.9% range of 200 draws
    (0.05 +- 0.045); a planted difference (signal 1.5 vs 0.3) gives p < 0.001."""
    rng = np.random.default_rng(1)
    ps = []
    for _ in range(200):
        y = rng.integers(0, 2, 120)
        ps.append(delong_test(y, y + rng.normal(size=120), y + rng.normal(size=120))["p"])
    ps = np.asarray(ps)
    assert 0.005 <= (ps < 0.05).mean() <= 0.095, (ps < 0.05).mean()
    assert 0.35 < np.median(ps) < 0.65  # uniform p-values have median 1/2
    y = rng.integers(0, 2, 120)
    planted = delong_test(y, 1.5 * y + rng.normal(size=120), 0.3 * y + rng.normal(size=120))
    assert planted["p"] < 0.001 and planted["diff"] > 0.2


def test_holm_by_hand_and_family_wise_error():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    # family of 5 true nulls, 400 families: Holm keeps P(any rejection) <= 0.05 (+ binomial slack)
    rng = np.random.default_rng(2)
    fwer = np.mean([(holm(rng.uniform(size=5)) < 0.05).any() for _ in range(400)])
    assert fwer <= 0.08


def test_patient_level_bootstrap_covers_and_resamples_patients():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    frame = pd.DataFrame({"case_id": np.repeat(np.arange(40), 2), "label": y,
                          "prob": np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 80), 0, 1)})  # fmt: skip
    frame["pred"] = (frame["prob"] >= 0.5).astype(int)
    ci = bootstrap_ci(frame, pooled_metrics("classification")["auc"], n_boot=300)
    assert ci["n_patients"] == 40 and ci["n_boot"] == 300
    assert ci["ci_low"] < ci["estimate"] < ci["ci_high"]
    null = frame.assign(prob=rng.uniform(size=80))
    ci0 = bootstrap_ci(null, pooled_metrics("classification")["auc"], n_boot=300)
    assert ci0["ci_low"] < 0.5 < ci0["ci_high"]


def test_harrell_c_matches_scikit_survival():
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(4)
    t = rng.integers(1, 12, 70).astype(float)  # tied times
    e = rng.random(70) < 0.6
    r = rng.integers(0, 6, 70).astype(float)  # tied risks
    assert fast_harrell_c(t, e, r) == pytest.approx(concordance_index_censored(e, t, r)[0], abs=1e-12)


def _folds(diff_per_seed, noise):
    rows = []
    rng = np.random.default_rng(5)
    for seed, d in enumerate(diff_per_seed):
        for fold in range(5):
            base = 0.7 + rng.normal(0, noise)
            for fs, v in (("uni", base), ("zoom", base + d)):
                rows.append({"aggregator": "abmil", "feature_set": fs, "seed": seed, "repeat": 0, "fold": fold,
                             "auc": v, "n_train": 80, "n_val": 20, "n_test": 25})  # fmt: skip
    return pd.DataFrame(rows)


def test_seed_spread_and_plain_verdicts():
    folds = _folds([0.05, 0.052, 0.048], 0.01)
    seeds = seed_table(folds).set_index(["feature_set", "metric"])
    assert seeds.loc[("zoom", "auc"), "n_seeds"] == 3
    paired = paired_cells(folds, pd.DataFrame(), baseline="uni", task_type="classification")
    row = paired[paired["metric"] == "auc"].iloc[0]
    assert row["diff_mean"] == pytest.approx(0.05, abs=1e-9)
    assert row["diff_seed_sd"] == pytest.approx(0.002, abs=1e-9) and row["beyond_seed_noise"]
    noisy = paired_cells(
        _folds([0.05, -0.04, 0.01], 0.01), pd.DataFrame(), baseline="uni", task_type="classification"
    )
    assert not noisy[noisy["metric"] == "auc"].iloc[0]["beyond_seed_noise"]


def test_bench_finds_a_planted_difference_between_two_sets(planted, tmp_path):
    """End to end (real bags, two seeds): the planted set against the noise set under maxpool has a
    small DeLong p-value, and the summary says in words whether it exceeds the seed noise."""
    import torch

    from zoomfeat.mil.benchmark import Benchmark
    from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection

    torch.set_num_threads(1)
    task = TaskSection(name="p", labels=str(planted["labels"]), bags=str(planted["root"]),
                       label_map={"IDC": 0, "ILC": 1})  # fmt: skip
    mil = MILConfig(name="maxpool", arch="maxpool", hidden=[16], dropout=0.0, lr=3e-3, epochs=8, patience=4,
                    min_epochs=4, warmup=1, amp=False, batch_size=4)  # fmt: skip
    cfg = BenchmarkConfig(task=task, mil=mil, cv=CVSection(folds=3), feature_sets=["noise", "good"],
                          baseline="noise", seeds=[0, 1], out_dir=str(tmp_path / "out"), progress=False,
                          bootstrap=200, save_attention=False, save_models=False)  # fmt: skip
    Benchmark(cfg).run()
    paired = pd.read_csv(tmp_path / "out" / "paired.csv")
    auc = paired[paired["metric"] == "auc"].iloc[0]
    assert auc["feature_set"] == "good" and auc["aggregator"] == "maxpool"
    assert auc["diff_mean"] > 0.2 and auc["p_delong"] < 0.01 and auc["p_holm_delong"] == auc["p_delong"]
    folds = pd.read_csv(tmp_path / "out" / "folds_by_seed.csv")
    assert sorted(folds["seed"].unique()) == [0, 1] and len(folds) == 2 * 2 * 3
    assert len(pd.read_csv(tmp_path / "out" / "folds.csv")) == 2 * 3  # averaged over seeds
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "good vs noise under maxpool" in text and "seed noise" in text
