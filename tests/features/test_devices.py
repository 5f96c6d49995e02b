"""zoomfeat.features.devices: ``devices=`` runs one worker process per device over a shared slide list."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from zoomfeat.bags import FEATURE_SETS, bag_is_complete, bag_path, open_bag
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.devices import resolve_devices, worker_loaders, worker_threads
from zoomfeat.features.runner import extract_slides
from zoomfeat.features.writer import slide_outputs
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.slide.manifest import discover


def test_device_lists_threads_and_loaders():
    assert resolve_devices(None) is None
    assert resolve_devices(["cpu", "CPU"]) == ["cpu", "cpu"]
    assert resolve_devices("[cpu,cpu]") == ["cpu", "cpu"]
    with pytest.raises(ConfigError, match="devices"):
        resolve_devices([])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="devices=all but this machine has no CUDA device"):
            resolve_devices("all")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_devices([0, 1])
    # CPU workers share the cores; GPU workers keep 2 threads and share the cores among loaders
    assert worker_threads(["cpu", "cpu"], cpus=2) == 1 and worker_threads(["cpu"] * 3, cpus=16) == 5
    assert worker_threads(["cuda:0"] * 8, cpus=16) == 2
    cfg = ExtractConfig()
    assert worker_loaders(cfg, ["cpu", "cpu"], cpus=16) == 0
    assert worker_loaders(cfg, [f"cuda:{i}" for i in range(8)], cpus=128) == 8
    assert worker_loaders(cfg, [f"cuda:{i}" for i in range(4)], cpus=16) == 3
    assert worker_loaders(cfg.replace(num_workers=5), ["cuda:0"], cpus=2) == 5


@pytest.fixture(scope="module")
def four_slides(small_slides, synthetic_slide_factory, tmp_path_factory):
    """det_a, det_b (conftest) + det_c, det_d: 1024 px, one parent each."""
    d = tmp_path_factory.mktemp("four_slides")
    for p in small_slides.iterdir():
        shutil.copy(p, d / p.name)
    for name, seed in (("det_c", 2), ("det_d", 3)):
        p = synthetic_slide_factory(
            name, width=1024, height=1024, mpp=0.5, levels=2, seed=seed, tissue_fraction=0.3
        )
        shutil.copy(p, d / p.name)
    return d


def _kill_first_lock_holder(out, killed: dict, stop: threading.Event) -> None:
    """Poll {out}/.locks: SIGKILL the first worker process seen holding a slide's lock."""
    while not stop.is_set():
        for lock in (out / ".locks").glob("*.lock") if (out / ".locks").is_dir() else []:
            try:
                pid = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # being written
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
                killed.update(slide=lock.stem, pid=pid)
                return
        time.sleep(0.005)


def test_two_workers_over_four_slides_a_killed_worker_fails_only_its_slide(four_slides, tmp_path, tiny):
    """Two CPU worker processes share four slides; one is SIGKILLed while it holds a slide.

    Threads: each worker sets torch to cpu_count // 2 = 1 thread on the 2-core test machine; the
    single-process reference here runs with 1 thread too, so the bags must be *bitwise* equal
    (same batch size, same thread count: nothing in the recipe depends on the process, see
    docs/ARCHITECTURE.md "Determinism").
    """
    slides = discover([four_slides])
    cfg = ExtractConfig.from_kwargs(**tiny, batch_size=8, num_workers=0)
    ref = tmp_path / "ref"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert extract_slides(slides, ref, cfg).ok
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "pool"
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_lock_holder, args=(out, killed, stop), daemon=True)
    killer.start()
    try:
        summary = extract_slides(slides, out, cfg.replace(devices=["cpu", "cpu"]))
    finally:
        stop.set()
        killer.join()
    ids = [s.slide_id for s in slides]
    assert killed, "no worker was killed"
    status = {r.slide_id: r.status for r in summary.results}
    assert sorted(status) == ids  # every slide handed out once, reported once
    assert status[killed["slide"]] == "failed" and [s for s in ids if status[s] == "done"] == [
        s for s in ids if s != killed["slide"]
    ], summary.report()
    failed = summary.failed[0]
    assert "died (signal 9) while extracting it" in failed.error
    # the survivor took every other slide; the killed slide has no published file
    victim = summary.worker_of[killed["slide"]]
    assert {summary.worker_of[s] for s in ids if s != killed["slide"]} == {
        ({"cpu#0", "cpu#1"} - {victim}).pop()
    }
    assert not any(p.exists() for p in slide_outputs(out, killed["slide"]).values())
    assert "on 2 devices (cpu, cpu)" in summary.report() and "1 failed" in summary.report()

    # rerun with the same devices: only the killed slide is extracted
    rerun = extract_slides(slides, out, cfg.replace(devices=["cpu", "cpu"]))
    assert {r.slide_id: r.status for r in rerun.results} == {
        s: "done" if s == killed["slide"] else "skipped" for s in ids
    }
    for sid in ids:
        assert all(bag_is_complete(p) for p in slide_outputs(out, sid).values())
        for name in FEATURE_SETS:
            a, b = open_bag(bag_path(ref, name, sid)), open_bag(bag_path(out, name, sid))
            np.testing.assert_array_equal(a.features, b.features, err_msg=f"{sid} {name}")
            np.testing.assert_array_equal(a.coords, b.coords)
            assert a.attrs["config_hash"] == b.attrs["config_hash"]
    assert not list(out.rglob("*.tmp-*"))


def test_hand_out_order_and_every_worker_stopped_when_the_list_is_empty():
    """The main process's bookkeeping, without processes: slides go out in the given order to idle
    workers, none before worker 0 has checked the existing bags, and every worker is told to stop
    once the list is empty, whichever finishes first (worker 0 first used to leave worker 1 waiting)."""
    from pathlib import Path

    from zoomfeat.features.devices import DevicePool, _Worker
    from zoomfeat.features.families import SlidePlan
    from zoomfeat.features.pipeline import SlideResult
    from zoomfeat.slide.manifest import SlideSpec

    sent: dict[int, list] = {0: [], 1: []}

    class Conn:
        def __init__(self, i):
            self.i = i

        def send(self, msg):
            sent[self.i].append(msg)

    pool = DevicePool(["cpu", "cpu"], ExtractConfig())
    pool.slides = [SlideSpec(Path(f"/x/s{k}.svs")) for k in range(3)]
    pool.outcome.results = [None] * 3
    pool.pending = [2, 1, 0]
    w0, w1 = (_Worker(i, "cpu", None, Conn(i)) for i in range(2))
    pool.workers = [w0, w1]
    pool._handle(w1, ("ready", 1, None))
    pool._hand_out()
    assert sent == {0: [], 1: []}  # worker 0 has not planned the slides yet
    plans = [SlidePlan(f"s{k}", Path("/out")) for k in range(3)]
    pool._handle(w0, ("ready", 0, plans))
    pool._hand_out()
    assert sent == {0: [("slide", 0, plans[0])], 1: [("slide", 1, plans[1])]}  # each slide with its plan

    def done(w, k):
        pool._handle(w, ("result", w.index, k, SlideResult(f"/x/s{k}.svs", f"s{k}", "done")))
        pool._hand_out()

    done(w0, 0)
    done(w0, 2)
    assert sent[0][-1] == ("stop",) and sent[1] == [("slide", 1, plans[1])]  # worker 1 still busy
    done(w1, 1)
    assert sent[1][-1] == ("stop",)
    assert [r.slide_id for r in pool.outcome.results] == ["s0", "s1", "s2"]
    assert pool.outcome.worker_of == {"s0": "cpu#0", "s1": "cpu#1", "s2": "cpu#0"}
