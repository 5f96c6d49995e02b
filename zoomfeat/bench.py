"""``python -m zoomfeat.bench task=NAME ...``: attention-MIL benchmarks, ZoomLDM vs UNI features.

Thin Hydra entry point: it turns ``conf/bench.yaml`` into a
:class:`zoomfeat.mil.benchmark.BenchmarkConfig` and calls
:func:`zoomfeat.mil.benchmark.run_benchmark`. Examples::

    python -m zoomfeat.bench task=musk1 cv.folds=10
    python -m zoomfeat.bench task=brca task.labels=brca_labels.csv task.bags=features/ mil=gated_abmil
    python -m zoomfeat.bench -m task=musk1,musk2 mil=abmil,gated_abmil cv.folds=10

Under ``--multirun`` each job writes into ``{out_dir}/{swept key=value,...}`` (e.g.
``bench_results/musk1/abmil/mil.lr=0.001``), so sweeps over settings that ``out_dir`` does not
name never overwrite each other.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from zoomfeat.cli import hydra_main


def _swept_keys() -> list[str]:
    """Keys the command line sweeps (``mil.lr=1e-3,1e-4``), read back from ``sys.argv``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:  # not our command line (e.g. a launcher's worker process)
        return []
    return [o.key_or_group for o in overrides if o.is_sweep_override()]


def _job_out_dir(out_dir: str) -> Path:
    """``out_dir``, or under ``--multirun`` ``out_dir/{swept key=value,...}`` (``job{N}`` if unknown)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    path = Path(out_dir)
    if not HydraConfig.initialized():
        return path
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return path
    swept = set(_swept_keys())
    parts = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    name = re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", ",".join(parts))[:200] or f"job{hc.job.num}"
    return path / name


def run(cfg: Any) -> dict[str, Any]:
    """Hydra task function: ``conf/bench.yaml`` -> :func:`zoomfeat.mil.benchmark.run_benchmark`."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    if c.get("threads"):
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(int(c["threads"]))
        try:
            return _run(c)
        finally:
            torch.set_num_threads(saved)
    return _run(c)


def _run(c: dict[str, Any]) -> dict[str, Any]:
    from zoomfeat.mil.benchmark import BenchmarkConfig, run_benchmark
    from zoomfeat.mil.train import MILConfig

    task = dict(c["task"])
    name = task.pop("name")
    known = {
        "labels",
        "bags",
        "slide_col",
        "case_col",
        "label_col",
        "label_map",
        "threshold",
        "missing_bags",
        "csv",
    }
    unknown = sorted(set(task) - known)
    if unknown:
        raise ValueError(f"task {name!r}: unknown key(s) {unknown}; known: {sorted(known)}")
    bench = BenchmarkConfig(
        task=name,
        out_dir=_job_out_dir(c["out_dir"]),
        feature_sets=list(c["feature_sets"]),
        baseline=c.get("baseline"),
        folds=int(c["cv"]["folds"]),
        repeats=int(c["cv"]["repeats"]),
        val_fraction=float(c["cv"]["val_fraction"]),
        splits=c["cv"].get("splits"),
        seed=int(c["seed"]),
        mil=MILConfig.from_dict(c["mil"]),
        device=str(c["device"]),
        in_memory=c["data"]["in_memory"],
        dtype=str(c["data"]["dtype"]),
        memory_fraction=float(c["data"]["memory_fraction"]),
        save_attention=bool(c["save_attention"]),
        progress=bool(c["progress"]),
        csv=task.pop("csv", None) or {},
        **{k: v for k, v in task.items()},
    )
    if not bench.bags:
        hint = (
            f" (build the labels with benchmarks/tasks/{name}_labels.py)" if name in ("brca", "hrd") else ""
        )
        raise ValueError(
            f"task {name!r} needs its bags: task.bags=DIR (a zoomfeat.extract output directory) and task.labels=CSV{hint}"
        )
    return run_benchmark(bench)


def main() -> Any:
    return hydra_main("bench", run, inputs_key=None)


if __name__ == "__main__":
    main()
