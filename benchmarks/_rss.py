"""Memory figures the benchmarks share: resident memory of a process tree, the peak of this
process, the slope of RSS over work done, and the tissue + grid measurement of a huge slide.

- :func:`tree_rss_mb`: resident MB of a process and its live children (psutil), sampled after
  each slide by ``cohort.py extract``;
- :func:`peak_rss_mb`: this process's peak resident MB (``ru_maxrss``, kB on Linux);
- :func:`slope_mb_per_100`: the least-squares slope of RSS samples against the count of slides
  done, in MB per 100 slides;
- :func:`tissue_grid_figures`: tissue detection + ``TileGrid.build`` (integer lattice, as
  extraction lays it) on one slide in this process: seconds, CPU seconds and peak RSS. Run it in a
  fresh process (``cohort.py large``, ``flat_slide.py``), so the peak is that of this work alone.
"""

from __future__ import annotations

import os
import resource
import time
import warnings
from pathlib import Path
from typing import Any


def tree_rss_mb(proc: Any) -> float:
    """Resident MB of ``proc`` (a ``psutil.Process``) and its live children."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except Exception:  # noqa: BLE001 - a worker that just ended
            pass
    return total / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident MB (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def slope_mb_per_100(rss: list[float], warmup: int) -> float:
    """Least-squares slope of ``rss`` (MB, one sample per slide) over the slide count, x 100,
    leaving out the first ``warmup`` samples (allocator and caches settling); NaN under 3 samples."""
    import numpy as np

    y = np.asarray(rss[warmup:], float)
    if len(y) < 3:
        return float("nan")
    x = np.arange(warmup + 1, warmup + 1 + len(y), dtype=float)
    return float(np.polyfit(x, y, 1)[0] * 100)


def tissue_grid_figures(path: Path, *, progress: bool = False) -> dict[str, Any]:
    """Open ``path``, detect its tissue and lay the integer-lattice grid in this process: the
    slide's size, the grid's size, wall and CPU seconds, peak RSS and the warnings raised."""
    from zoomfeat.slide import Slide
    from zoomfeat.slide.grid import TileGrid

    t0 = time.perf_counter()
    slide = Slide.open(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid = TileGrid.build(slide, lattice="integer", progress=progress)
    return {
        "slide": str(path),
        "level0_px": list(slide.dimensions),
        "levels": slide.level_count,
        "mask_px": list(grid.mask.shape),
        "tissue_fraction": round(float(grid.tissue_mask.tissue_fraction), 4),
        "parents": len(grid),
        "kept_children": int(grid.n_kept_children),
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(sum(os.times()[:2]), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "warnings": [str(w.message)[:200] for w in caught],
    }
