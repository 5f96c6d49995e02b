"""HDF5 file opens per slide of ``zoomfeat.extract``: a fresh run, then a rerun over complete bags.

    python benchmarks/hdf5_opens.py                       # the demo slide: default recipe, then 9 recipes x 3 encoders
    python benchmarks/hdf5_opens.py --scenario default    # one scenario
    python benchmarks/hdf5_opens.py --slide my.svs        # another slide

Every ``h5py.File`` opened in this process is counted (``h5py.File.__init__`` is wrapped here,
in the benchmark process only; the real open still happens), and attributed to a slide by its
file name (``{slide_id}.h5``, ``{slide_id}_patches.h5`` and their temporary names
``.{name}.tmp-{pid}``). Per slide and run it prints the opens, the slide's output files that
existed before the run and the files the run wrote (created or replaced), and checks the
targets of issue 19:

- a rerun over complete bags opens each existing file at most once: ``opens <= existing``;
- a fresh run opens each file it writes once, and each existing file once:
  ``opens <= written + existing``.

Scenarios (the demo's settings: tiny ZoomLDM model and encoder, a preview PNG; ``num_workers=0``
so every open happens in this process):

- ``default``: the default recipe and the tiny encoder (families ``zoomldm``, ``uni``: 8 files);
- ``sweep``: ``features.sweep`` 3 timesteps x 3 taps (9 recipes, plus the default recipe) and
  ``encoders=[tiny,ctranspath,phikon]`` (seeded random weights): 13 families, 41 files.

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

SCENARIOS: dict[str, dict] = {
    "default": {},
    "sweep": {
        "features.sweep.timestep": [50, 200, 500],
        "features.sweep.taps": [["middle_block"], ["output_blocks.2"], ["output_blocks.4"]],
        "encoders": ["tiny", "ctranspath", "phikon"],
        "allow_random_weights": True,
    },
}
#: the demo's settings (``demo=true``: tiny model and encoder, a preview PNG); no DataLoader workers
BASE = {"model": "tiny", "encoder": "tiny", "preview": True, "progress": False, "num_workers": 0}

_TMP = re.compile(r"^\.(?P<name>.+\.h5)\.tmp-\d+$")


def output_name(path: str | os.PathLike) -> str:
    """The final file name of an output path (a temporary ``.{name}.tmp-{pid}`` counts as ``name``)."""
    name = Path(path).name
    m = _TMP.match(name)
    return m.group("name") if m else name


def slide_of(path: str | os.PathLike) -> str:
    """The slide id an output file belongs to (``{slide_id}.h5`` / ``{slide_id}_patches.h5``)."""
    name = output_name(path)
    return name[: -len("_patches.h5")] if name.endswith("_patches.h5") else name[: -len(".h5")]


@contextmanager
def count_h5_opens() -> Iterator[list[str]]:
    """Record the path of every ``h5py.File`` opened in this process while the context is active."""
    import h5py

    opened: list[str] = []
    real = h5py.File.__init__

    def counting(self, name, *args, **kwargs):  # noqa: ANN001 - h5py's own signature
        if isinstance(name, (str, bytes, os.PathLike)):  # an open (h5py also wraps already open FileIDs)
            opened.append(os.fsdecode(name))
        return real(self, name, *args, **kwargs)

    h5py.File.__init__ = counting
    try:
        yield opened
    finally:
        h5py.File.__init__ = real


def snapshot(out_dir: Path) -> dict[Path, tuple[int, int]]:
    """``{output file: (inode, mtime_ns)}`` of every final ``*.h5`` under ``out_dir``."""
    return {
        p: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out_dir.rglob("*.h5")
        if not p.name.startswith(".")
    }


def measure(slides: list, out_dir: Path, config) -> dict[str, dict[str, int]]:  # noqa: ANN001
    """One ``extract_slides`` run: ``{slide_id: {"opens", "existing", "written"}}``."""
    from zoomfeat.features.runner import extract_slides

    before = snapshot(out_dir) if out_dir.exists() else {}
    with warnings.catch_warnings(), count_h5_opens() as opened:
        warnings.simplefilter("ignore")
        summary = extract_slides(slides, out_dir, config, echo=lambda m: None)
    if not summary.ok:
        raise SystemExit(summary.report())
    after = snapshot(out_dir)
    written = [p for p, st in after.items() if before.get(p) != st]
    opens = Counter(slide_of(p) for p in opened)
    out = {}
    for s in slides:
        sid = s.slide_id
        out[sid] = {
            "opens": opens[sid],
            "existing": sum(slide_of(p) == sid for p in before),
            "written": sum(slide_of(p) == sid for p in written),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, default=None, help="slide file (default: the demo slide)")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--out", type=Path, default=None, help="output root (default: a temporary directory)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.runtime.resources import demo_slide
    from zoomfeat.slide.manifest import discover

    slides = discover([args.slide or demo_slide()])
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    root = args.out or Path(tempfile.mkdtemp(prefix="hdf5_opens_"))
    ok = True
    print(f"{'scenario':<9} {'run':<6} {'slide':<22} {'opens':>5} {'existing':>8} {'written':>7}  target")
    for name in names:
        config = ExtractConfig.from_kwargs(**BASE, **SCENARIOS[name])
        out = root / name
        for run in ("fresh", "rerun"):
            t0 = time.perf_counter()
            for sid, c in measure(slides, out, config).items():
                if run == "fresh":
                    bound, rule = c["written"] + c["existing"], "opens <= written + existing"
                else:
                    bound, rule = c["existing"], "opens <= existing"
                met = c["opens"] <= bound
                ok &= met
                print(
                    f"{name:<9} {run:<6} {sid:<22} {c['opens']:>5} {c['existing']:>8} {c['written']:>7}  "
                    f"{rule}: {'met' if met else 'MISSED'} ({time.perf_counter() - t0:.0f} s)"
                )
    print(f"outputs under {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
