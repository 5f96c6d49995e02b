"""Every kind of slide, one run: tiles/s of each form relative to the local SVS, pixel and feature
differences, and the stall between remote slides with and without ``cache_dir`` prefetching.

Forms of the CMU slide (zoomfeat/data/CMU-1-Small-Region.svs), all made here:

- ``svs``: the file, openslide (the reference);
- ``dicom``: a DICOM series written by wsidicomizer (openslide 4 reads it); ``dicom-wsidicom``: the
  same series read by wsidicom;
- ``ome-tiff``: an OME-TIFF pyramid written by tifffile (SubIFDs; tiffslide reads it);
- ``png``: a PNG of the decoded slide, with ``mpp=0.499``;
- ``svs-tiffslide``: the SVS read by tiffslide;
- ``s3``: the SVS in moto's S3 server on 127.0.0.1, read through fsspec + tiffslide;
- ``https``: the SVS from a byte-range HTTP server on 127.0.0.1, read through fsspec + tiffslide.

Throughput: every kept 5x parent's 1024 px region at 20x read and split into 16 children + the 5x
tile, as feature extraction does (17 tiles per region; best of ``--repeats``); pixel difference:
max |a - b| over all those regions against the SVS. ``--features``: the tiny model's bags of each
form against the SVS's (all forms are named ``CMU-1``, so the per-tile noise is the same).

Prefetch: ``--slides`` copies on the HTTP server with ``--latency-ms`` added to every request;
each slide is staged into a cache_dir, then its regions are read from the local copy (the work that
hides the next download); the stall is the time ``SlideCache.stage`` waited, slides 2..N.

    python benchmarks/slide_formats.py                    # tiles/s table + prefetch stall
    python benchmarks/slide_formats.py --features         # + tiny-model bag differences
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "slide"))  # the servers and writers the tests use

from zoomfeat.slide import Slide, TileGrid, split_parent  # noqa: E402
from zoomfeat.slide.remote import SlideCache  # noqa: E402

SVS = ROOT / "zoomfeat" / "data" / "CMU-1-Small-Region.svs"
GRID = {"progress": False, "lattice": "integer"}


def make_forms(tmp: Path) -> dict[str, Path]:
    from PIL import Image
    from slide_files import write_dicom, write_ome_pyramid

    ref = Slide.open(SVS)
    w, h = ref.dimensions
    pixels = ref.read_box(0, 0, w, h, out_w=w, out_h=h)
    forms = {"svs": tmp / "svs" / "CMU-1.svs"}
    forms["svs"].parent.mkdir()
    shutil.copy(SVS, forms["svs"])
    (tmp / "dicom").mkdir()
    forms["dicom"] = write_dicom(SVS, tmp / "dicom" / "CMU-1")
    (tmp / "ome").mkdir()
    forms["ome-tiff"] = write_ome_pyramid(pixels, tmp / "ome" / "CMU-1.ome.tiff")
    (tmp / "png").mkdir()
    forms["png"] = tmp / "png" / "CMU-1.png"
    Image.fromarray(pixels).save(forms["png"])
    return forms


def read_all(slide: Slide, grid: TileGrid) -> tuple[float, list[np.ndarray]]:
    t0 = time.perf_counter()
    regions = []
    for i in range(len(grid.parents)):
        region = grid.read_parent(slide, i)
        split_parent(region)
        regions.append(region)
    return time.perf_counter() - t0, regions


def timed_read(slide: Slide, grid: TileGrid) -> tuple[float, float, list[np.ndarray]]:
    """``(wall s, CPU s of this process, regions)`` of :func:`read_all`; the CPU time (every thread,
    the in-process S3/HTTP servers included) does not grow with the machine's load, the wall time does."""
    c0 = time.process_time()
    wall, regions = read_all(slide, grid)
    return wall, time.process_time() - c0, regions


def throughput(opened: dict[str, Slide], repeats: int) -> list[dict[str, Any]]:
    """Best of ``repeats`` per form, the forms interleaved in each repeat (a load that drifts during
    the run then weighs on every form alike)."""
    ref_grid = TileGrid.build(opened["svs"], **GRID)
    _, ref_regions = read_all(opened["svs"], ref_grid)
    grids = {name: TileGrid.build(slide, **GRID) for name, slide in opened.items()}
    best: dict[str, tuple[float, float, list[np.ndarray]]] = {}
    for _ in range(repeats):
        for name, slide in opened.items():
            wall, cpu, regions = timed_read(slide, grids[name])
            old = best.get(name)
            best[name] = (min(wall, old[0]) if old else wall, min(cpu, old[1]) if old else cpu, regions)
    rows = []
    for name, slide in opened.items():
        grid = grids[name]
        same = np.array_equal(grid.children.xy, ref_grid.children.xy) and np.array_equal(
            grid.children.kept, ref_grid.children.kept
        )
        wall, cpu, regions = best[name]
        diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(regions, ref_regions))
        rows.append(
            {
                "form": name,
                "reader": slide.reader,
                "same_tiles": same,
                "tiles_s": 17 * len(regions) / wall,
                "cpu_tiles_s": 17 * len(regions) / cpu,
                "max_px_diff": diff,
            }
        )
    base, cpu_base = rows[0]["tiles_s"], rows[0]["cpu_tiles_s"]
    for r in rows:
        r["relative"] = r["tiles_s"] / base
        r["cpu_relative"] = r["cpu_tiles_s"] / cpu_base
    return rows


def feature_diffs(forms: dict[str, str], out: Path, options: dict[str, Any]) -> dict[str, float]:
    import h5py

    from zoomfeat.features.pipeline import extract_slide

    bags: dict[str, dict[str, np.ndarray]] = {}
    for name, location in forms.items():
        mpp = 0.499 if name == "png" else None
        paths = extract_slide(location, out / name, mpp=mpp, model="tiny", encoder="tiny", progress=False)
        bags[name] = {}
        for key, p in paths.items():
            if key.startswith("patches") or key == "preview":
                continue
            with h5py.File(p, "r") as f:
                bags[name][key] = f["features"][:]
    ref = bags["svs"]
    return {
        name: max(float(np.abs(b[k] - ref[k]).max()) for k in ref)
        for name, b in bags.items()
        if name != "svs"
    }


def prefetch_stall(n_slides: int, latency_s: float, tmp: Path) -> dict[str, Any]:
    from servers import FileServer

    www = tmp / "www"
    www.mkdir()
    for i in range(n_slides):
        shutil.copy(SVS, www / f"slide-{i}.svs")
    out: dict[str, Any] = {"slides": n_slides, "latency_ms": 1000 * latency_s}
    with FileServer(www, latency_s=latency_s) as server:
        urls = [server.url(f"slide-{i}.svs") for i in range(n_slides)]
        for prefetch in (False, True):
            work = []
            with SlideCache(tmp / f"cache-{prefetch}") as cache:
                t_run = time.perf_counter()
                for i, url in enumerate(urls):
                    local = cache.stage(url)
                    if prefetch and i + 1 < n_slides:
                        cache.prefetch(urls[i + 1])
                    t0 = time.perf_counter()
                    with Slide.open(local, slide_id=f"slide-{i}") as slide:
                        read_all(slide, TileGrid.build(slide, **GRID))
                    work.append(time.perf_counter() - t0)
                    cache.release(url)
                total = time.perf_counter() - t_run
                waits = [cache.waits[u] for u in urls]
            key = "with_prefetch" if prefetch else "without_prefetch"
            out[key] = {
                "first_slide_wait_s": waits[0],
                "mean_stall_between_slides_s": float(np.mean(waits[1:])) if n_slides > 1 else 0.0,
                "mean_work_s": float(np.mean(work)),
                "total_s": total,
            }
        # for scale: the same slide read straight from the server (no cache_dir), one request per read
        t0 = time.perf_counter()
        with Slide.open(urls[0]) as slide:
            read_all(slide, TileGrid.build(slide, **GRID))
        out["direct_remote_read_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--features", action="store_true", help="also compare tiny-model bags")
    parser.add_argument("--slides", type=int, default=4, help="remote slides for the prefetch stall")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added to every HTTP request")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from servers import FileServer, S3Server

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        forms = make_forms(tmp)
        with S3Server() as s3, FileServer(forms["svs"].parent) as http:
            s3.put(SVS, "s3://bench/CMU-1.svs")
            opened = {
                "svs": Slide.open(forms["svs"]),
                "dicom": Slide.open(forms["dicom"]),
                "dicom-wsidicom": Slide.open(forms["dicom"], reader="wsidicom"),
                "ome-tiff": Slide.open(forms["ome-tiff"]),
                "png": Slide.open(forms["png"], mpp=0.499),
                "svs-tiffslide": Slide.open(forms["svs"], reader="tiffslide"),
                "s3": Slide.open("s3://bench/CMU-1.svs", storage_options=s3.storage_options),
                "https": Slide.open(http.url("CMU-1.svs")),
            }
            rows = throughput(opened, args.repeats)
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(
                f"# tiles/s reading every kept parent (17 tiles each), best of {args.repeats} interleaved; "
                f"{os.cpu_count()} CPUs, load average {load}"
            )
            print(
                "| form | reader | same tiles as SVS | tiles/s (wall) | relative | tiles per CPU-s | "
                "relative | max abs px diff |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for r in rows:
                print(
                    f"| {r['form']} | {r['reader']} | {r['same_tiles']} | {r['tiles_s']:.0f} | "
                    f"{r['relative']:.2f} | {r['cpu_tiles_s']:.0f} | {r['cpu_relative']:.2f} | {r['max_px_diff']} |"
                )
            if args.features:
                env = {
                    "AWS_ENDPOINT_URL": s3.endpoint,
                    "AWS_ACCESS_KEY_ID": s3.key,
                    "AWS_SECRET_ACCESS_KEY": s3.secret,
                }
                os.environ.update(env)
                locations = {k: str(v) for k, v in forms.items()}
                locations["https"] = http.url("CMU-1.svs")
                locations["s3"] = "s3://bench/CMU-1.svs"
                diffs = feature_diffs(locations, tmp / "bags", s3.storage_options)
                print("\n# tiny model: max abs feature difference against the SVS's bags (every set)")
                for name, d in diffs.items():
                    print(f"- {name}: {d:.3g}")
        stall = prefetch_stall(args.slides, args.latency_ms / 1000, tmp)
        print(
            f"\n# cache_dir stall between slides, {stall['slides']} slides, {stall['latency_ms']:g} ms per request"
        )
        for key in ("without_prefetch", "with_prefetch"):
            s = stall[key]
            print(
                f"- {key}: first slide waited {s['first_slide_wait_s'] * 1000:.0f} ms; mean stall between "
                f"slides {s['mean_stall_between_slides_s'] * 1000:.1f} ms; work per slide "
                f"{s['mean_work_s'] * 1000:.0f} ms; total {s['total_s']:.2f} s"
            )
        print(
            f"- the same slide read straight from the server (no cache_dir): {stall['direct_remote_read_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
