"""zoomfeat.mil.config: conf/bench.yaml (+ task/, mil/) is BenchmarkConfig; unknown keys and bad values refused."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zoomfeat.mil.config import (
    BenchmarkConfig,
    CVSection,
    DataSection,
    MILConfig,
    TaskSection,
    load_bench_config,
)
from zoomfeat.runtime.config import iter_keys
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.runtime.resources import config_dir


def test_unknown_keys_are_refused_with_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"unknown setting 'task.labal_col'; known keys under task: name, labels"
    ):
        load_bench_config({"task": {"name": "t", "bags": "b", "labal_col": "x"}})
    with pytest.raises(ConfigError, match=r"unknown setting 'mil.lrr'; known keys under mil: .*\blr\b"):
        load_bench_config({"task": {"name": "t"}, "mil": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"unknown setting 'cv.fold'"):
        load_bench_config({"task": {"name": "t"}, "cv": {"fold": 3}})


def _leaves(d: dict, prefix: str = ""):
    """Dotted keys of a composed config (label_map's keys are values, not settings)."""
    for k, v in d.items():
        if isinstance(v, dict) and k != "label_map":
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_every_shipped_task_validates_and_every_yaml_key_is_a_field():
    fields = {k for k, _ in iter_keys(BenchmarkConfig)}
    assert {"task.csv.header", "cv.splits", "data.in_memory", "mil.lr", "threads"} <= fields
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for task in ("brca", "hrd", "musk1", "musk2"):
            for mil in ("abmil", "gated_abmil"):
                composed = compose("bench", overrides=[f"task={task}", f"mil={mil}"])
                composed = OmegaConf.to_container(composed, resolve=True)
                assert set(_leaves(composed)) <= fields, (task, mil)
                cfg = load_bench_config(composed)
                assert cfg.task.name == task and cfg.mil.gated == (mil == "gated_abmil")
                assert cfg.out_dir == f"bench_results/{task}/{mil}"


def test_settings_are_checked_when_built():
    task = TaskSection(name="t", bags="x")
    with pytest.raises(ConfigError, match="feature_sets is empty"):
        BenchmarkConfig(task, feature_sets=[])
    with pytest.raises(ConfigError, match="lists a set twice"):
        BenchmarkConfig(task, feature_sets=["a", "a"])
    with pytest.raises(ConfigError, match="cv.folds must be >= 2"):
        CVSection(folds=1)
    with pytest.raises(ConfigError, match="task.missing_bags"):
        TaskSection(name="t", missing_bags="skip")
    # the YAML's default out_dir resolves the same way from Python
    assert BenchmarkConfig(task, mil=MILConfig(name="gated_abmil")).out_dir == "bench_results/t/gated_abmil"
    assert BenchmarkConfig(task).paired_baseline == "uni_20x"
    assert BenchmarkConfig(task, feature_sets=["uni_20x"]).paired_baseline is None  # nothing to pair with


def test_values_are_converted_or_refused_naming_the_key():
    cfg = load_bench_config({"task": {"name": "t"}, "cv": {"folds": "7"}, "data": {"in_memory": False}})
    assert cfg.cv.folds == 7 and cfg.data.in_memory is False and isinstance(cfg.mil, MILConfig)
    with pytest.raises(ConfigError, match="cv.folds"):
        load_bench_config({"task": {"name": "t"}, "cv": {"folds": "many"}})
    with pytest.raises(ConfigError, match="data.in_memory must be true, false or auto"):
        DataSection(in_memory="sometimes")
    with pytest.raises(ConfigError, match="mil.att_act"):
        load_bench_config({"task": {"name": "t"}, "mil": {"att_act": "sigmoid"}})
