"""Bad input of regression and survival tasks, and aggregators that cannot do a task: one clear line
naming the file or key, raised before any training starts (the fold loop is never built)."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from zoomfeat.mil.benchmark import Benchmark
from zoomfeat.mil.config import BenchmarkConfig, CVSection, MILConfig, TaskSection
from zoomfeat.runtime.errors import ConfigError, InputError

from .bagfactory import write_bags


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("task_bags")
    rng = np.random.default_rng(0)
    feats = {f"s{i:02d}": rng.normal(size=(5, 4)).astype(np.float32) for i in range(12)}
    write_bags(root, "a", feats)
    return root, sorted(feats)


def labels_csv(tmp_path, slides, **cols) -> str:
    path = tmp_path / "labels.csv"
    pd.DataFrame({"slide_id": slides, "case_id": slides, **cols}).to_csv(path, index=False)
    return str(path)


def fails_before_training(cfg: BenchmarkConfig, error=InputError) -> str:
    bench = Benchmark(cfg)
    with pytest.raises(error) as err:
        bench.run()
    assert not hasattr(bench, "loop"), "training had started"
    message = str(err.value)
    assert "\n" not in message
    return message


def config(
    tmp_path, root, task: TaskSection, folds: int = 3, mil: MILConfig | None = None
) -> BenchmarkConfig:
    task.bags = str(root)
    return BenchmarkConfig(task=task, mil=mil or MILConfig(epochs=1), cv=CVSection(folds=folds),
                           feature_sets=["a"], baseline=None, out_dir=str(tmp_path / "out"), progress=False)  # fmt: skip


def test_non_numeric_regression_target(tmp_path, bags):
    root, slides = bags
    target = [str(v) for v in range(11)] + ["high"]
    path = labels_csv(tmp_path, slides, hrd_score=target)
    task = TaskSection(name="hrd", type="regression", labels=path, label_col="hrd_score")
    message = fails_before_training(config(tmp_path, root, task))
    assert path in message and "task.label_col" in message and "got high (slides s11)" in message


def test_time_not_positive(tmp_path, bags):
    root, slides = bags
    time = [10.0] * 11 + [0.0]
    path = labels_csv(tmp_path, slides, os_days=time, os_event=[1, 0] * 6)
    task = TaskSection(name="s", type="survival", labels=path, time_col="os_days", event_col="os_event")
    message = fails_before_training(config(tmp_path, root, task))
    assert path in message and "task.time_col" in message and "> 0" in message and "s11" in message


def test_survival_fold_without_events(tmp_path, bags):
    root, slides = bags
    path = labels_csv(tmp_path, slides, os_days=np.arange(1, 13) * 30.0, os_event=[1] + [0] * 11)
    task = TaskSection(name="s", type="survival", labels=path, time_col="os_days", event_col="os_event")
    message = fails_before_training(config(tmp_path, root, task, folds=3))
    assert (
        path in message and "task.event_col" in message and "no event" in message and "1 patient" in message
    )
    # a reused split (cv.splits) whose test fold holds no event is refused the same way
    splits = tmp_path / "splits.csv"
    pd.DataFrame({"slide_id": slides, "case_id": slides, "label": [1] + [0] * 11, "repeat": 0,
                  "fold": 0, "part": ["train"] * 6 + ["test"] * 6}).to_csv(splits, index=False)  # fmt: skip
    cfg = config(tmp_path, root, task)
    cfg.cv.splits = str(splits)
    message = fails_before_training(cfg)
    assert "fold 0: its test part" in message and "task.event_col" in message


def test_aggregator_that_cannot_do_the_task(tmp_path, bags):
    root, slides = bags
    clam = MILConfig(name="clam_sb", arch="clam_sb")
    with pytest.raises(ConfigError, match=r"mil=clam_sb .*does not support regression.*task.type=regression"):
        config(tmp_path, root, TaskSection(name="r", type="regression"), mil=clam)
    # k = 3 classes is known once the labels are read: refused before training
    path = labels_csv(tmp_path, slides, label=[0, 1, 2] * 4)
    task = TaskSection(name="k3", labels=path)
    message = fails_before_training(config(tmp_path, root, task, mil=clam), ConfigError)
    assert "mil=clam_sb" in message and "multiclass" in message


def test_cli_prints_one_line(tmp_path, bags):
    root, slides = bags
    path = labels_csv(tmp_path, slides, os_days=[5.0] * 11 + [-3.0], os_event=[1, 0] * 6)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("ZOOMFEAT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "zoomfeat.bench", "task=custom", "task.type=survival", f"task.labels={path}",
         f"task.bags={root}", "task.time_col=os_days", "task.event_col=os_event", "feature_sets=[a]",
         "baseline=null", f"out_dir={tmp_path / 'cli'}", "progress=false"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "task.time_col" in lines[0] and path in lines[0], proc.stderr
