"""``python -m zoomfeat.bench task=NAME ...``: attention-MIL benchmarks, ZoomLDM vs UNI features.

Thin Hydra entry point: it validates ``conf/bench.yaml`` (with its ``task/`` and ``mil/`` groups)
into a :class:`zoomfeat.mil.config.BenchmarkConfig` and runs
:class:`zoomfeat.mil.benchmark.Benchmark`. Input errors print one line
(``zoomfeat bench: error: ...``; ``ZOOMFEAT_DEBUG=1`` shows the trace). Examples::

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


def _listed_aggregators() -> list[str]:
    """The names of ``mil=[a,b,...]`` on the command line (Hydra merges a list of group options
    into one node, so the list is read back from the overrides); [] without one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    for o in HydraConfig.get().overrides.task:
        key, _, value = o.partition("=")
        if key.lstrip("+~") == "mil" and value.strip().startswith("["):
            return [v.strip() for v in value.strip()[1:-1].split(",") if v.strip()]
    return []


def _compose_aggregators(names: list[str]) -> list[dict[str, Any]]:
    """``mil`` of each listed aggregator, composed with the run's other overrides (``mil.lr=...``
    and the task's ``mil.*`` apply to each)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from zoomfeat.runtime.config import plain_dict

    others = [o for o in HydraConfig.get().overrides.task if o.partition("=")[0].lstrip("+~") != "mil"]
    return [
        plain_dict(compose(config_name="bench", overrides=[*others, f"mil={name}"]).mil) for name in names
    ]


def run(cfg: Any) -> dict[str, Any]:
    """Hydra task function: ``conf/bench.yaml`` -> :class:`~zoomfeat.mil.config.BenchmarkConfig` -> the run.

    The composed config is validated into the dataclass (unknown keys and bad values are a
    :class:`~zoomfeat.runtime.errors.ConfigError`, printed as one line by :mod:`zoomfeat.cli`).
    """
    from zoomfeat.mil.benchmark import run_benchmark
    from zoomfeat.mil.config import load_bench_config
    from zoomfeat.runtime.config import plain_dict

    bench = load_bench_config(cfg)
    names = _listed_aggregators()
    if len(names) > 1:  # mil=[abmil,transmil]: each aggregator composed on its own, one run
        bench = load_bench_config({**plain_dict(cfg), "aggregators": _compose_aggregators(names)})
    bench.out_dir = str(_job_out_dir(bench.out_dir))
    result = run_benchmark(bench)
    if "paper_table" in result["paths"]:  # preset=...: the published table's layout, printed last
        print(result["paths"]["paper_table"].read_text(), flush=True)
    return result


def main() -> Any:
    return hydra_main("bench", run, inputs_key=None)


if __name__ == "__main__":
    main()
