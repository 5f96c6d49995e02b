"""What each choice of ``bags.sets`` / ``bags.fused`` costs: tiles embedded, ZoomLDM tiles, seconds.

    OMP_NUM_THREADS=1 python benchmarks/sets_cost.py demo                  # the demo slide, tiny models
    OMP_NUM_THREADS=1 python benchmarks/sets_cost.py synthetic --slides 3  # zoomldm=false, 3 slides
    python benchmarks/sets_cost.py synthetic --encoder phikon --repeats 1  # a ViT-B (random weights)

Every configuration extracts the same slides into a fresh directory, in one process (the models
loaded once per configuration and cached), the configurations interleaved within each repeat.
For each it prints the tiles each embedding job embedded and the tiles ZoomLDM ran on (counted by
wrapping the pass's ``FeatureModels.embed`` and ``contexts``), the extraction's wall and CPU
seconds (``time.perf_counter`` / ``time.process_time``; best of ``--repeats``), and their ratio to
the first configuration (every set as files, today's default). Set ``OMP_NUM_THREADS=1`` for CPU
seconds that mean one core. ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: (name, overrides) of the configurations compared, the reference first
DEMO_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("all sets, fused as files (default)", {}),
    ("bags.fused=derived", {"bags.fused": "derived"}),
    ("bags.sets=[20x,5x]", {"bags.sets": ["20x", "5x"]}),
    ("bags.sets=[20x]", {"bags.sets": ["20x"]}),
]
SYNTHETIC_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("all sets (default)", {}),
    ("bags.sets=[20x]", {"bags.sets": ["20x"]}),
]


def counted_extractor(overrides: dict[str, Any]) -> tuple[Any, Counter[str], list[int]]:
    """An Extractor whose embedding and ZoomLDM tiles are counted: (extractor, tiles per job, [ZoomLDM tiles])."""
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.features.pipeline import Extractor

    ex = Extractor(ExtractConfig.from_kwargs(**overrides))
    embedded: Counter[str] = Counter()
    zoomldm = [0]
    embed, contexts = ex.models.embed, ex.models.contexts

    def counting_embed(images: Any, job: Any = None) -> Any:
        embedded[str(job)] += len(images)
        return embed(images, job)

    def counting_contexts(grids: Any, mags: Any) -> Any:  # one conditioning grid per ZoomLDM tile
        zoomldm[0] += sum(len(g) for g in grids)
        return contexts(grids, mags)

    ex.models.embed, ex.models.contexts = counting_embed, counting_contexts
    return ex, embedded, zoomldm


def run(slides: list[Path], configs: list[tuple[str, dict[str, Any]]], base: dict[str, Any],
        *, repeats: int, work: Path) -> list[dict[str, Any]]:  # fmt: skip
    """Every configuration over ``slides``, interleaved, ``repeats`` times; best wall and CPU seconds."""
    from zoomfeat.bags import open_bag

    rows: list[dict[str, Any]] = [{"config": name, "wall_s": [], "cpu_s": []} for name, _ in configs]
    for rep in range(repeats):
        for row, (_, overrides) in zip(rows, configs):
            ex, embedded, zoomldm = counted_extractor({**base, **overrides})
            out = work / f"out{rep}"
            shutil.rmtree(out, ignore_errors=True)
            w0, c0 = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = [ex.extract(s, out) for s in slides]
            row["wall_s"].append(time.perf_counter() - w0)
            row["cpu_s"].append(time.process_time() - c0)
            assert all(r.status == "done" for r in results), [r.line() for r in results]
            bags = sorted(out.rglob("features_*/*.h5"))
            n20 = sum(r.n20 for r in results)
            row.update(
                embedded=dict(embedded),
                embedded_total=sum(embedded.values()),
                zoomldm_tiles=zoomldm[0],
                kept_20x=n20,
                parents_5x=sum(r.n5 for r in results),
                files=sorted({p.parent.name.removeprefix("features_") for p in bags}),
                bag_bytes_per_kept_tile=round(sum(p.stat().st_size for p in bags) / max(1, n20), 1),
                feature_values_per_kept_tile=round(
                    sum(open_bag(p).features.size for p in bags) / max(1, n20), 1
                ),
            )
    ref = rows[0]
    for row in rows:
        row["wall_s"], row["cpu_s"] = round(min(row["wall_s"]), 2), round(min(row["cpu_s"]), 2)
        row["cpu_ratio"] = round(row["cpu_s"] / ref["cpu_s"], 3)
        row["wall_ratio"] = round(row["wall_s"] / ref["wall_s"], 3)
        row["embedded_ratio"] = round(row["embedded_total"] / max(1, ref["embedded_total"]), 3)
    return rows


def synthetic_slides(d: Path, n: int, side: int) -> list[Path]:
    from zoomfeat.slide.synthetic import write_synthetic_slide

    d.mkdir(parents=True, exist_ok=True)
    return [
        write_synthetic_slide(
            d / f"syn{i}.svs",
            width=side,
            height=side,
            mpp=0.5,
            levels=2,
            seed=i,
            tissue_fraction=0.15 + 0.05 * i,
        )  # fmt: skip
        for i in range(n)
    ]


def table(rows: list[dict[str, Any]]) -> str:
    head = "| config | sets written | embedded tiles (per job) | ZoomLDM tiles | wall s | CPU s | CPU ratio | bytes/kept 20x tile |"
    lines = [head, "|:--|:--|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        per_job = ", ".join(f"{k} {v}" for k, v in r["embedded"].items())
        lines.append(
            f"| {r['config']} | {len(r['files'])} files | {r['embedded_total']} ({per_job}) | {r['zoomldm_tiles']} "
            f"| {r['wall_s']} | {r['cpu_s']} | {r['cpu_ratio']} | {r['bag_bytes_per_kept_tile']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["demo", "synthetic"])
    ap.add_argument("--slides", type=int, default=3, help="synthetic slides")
    ap.add_argument("--side", type=int, default=3072, help="synthetic slide side, level-0 px at 0.5 um/px")
    ap.add_argument(
        "--encoder", default="tiny", help="synthetic: the encoder (registry name; random weights)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    base: dict[str, Any] = {"model": "tiny", "encoder": "tiny", "progress": False, "batch_size": args.batch_size,
                            "num_workers": 0, "device": "cpu"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sets_cost_") as tmp:
        work = Path(tmp)
        if args.mode == "demo":
            from zoomfeat.runtime.resources import demo_slide

            slides, configs = [Path(demo_slide())], DEMO_CONFIGS
        else:
            slides, configs = synthetic_slides(work / "slides", args.slides, args.side), SYNTHETIC_CONFIGS
            base["zoomldm"] = False
            if args.encoder != "tiny":
                base.update(encoders=[args.encoder], allow_random_weights=True)
        rows = run(slides, configs, base, repeats=args.repeats, work=work)
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
