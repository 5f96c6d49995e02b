"""``devices=``: one extraction worker process per device, slides handed out one at a time.

``devices=all`` (every CUDA device), ``devices=[0,1,2,3]`` (``cuda:0`` ... ``cuda:3``) or
``devices=[cpu,cpu]`` (two CPU workers, for testing) starts one *spawned* process per entry. Each
loads the models once on its device, sets its own thread counts and extracts the slides the main
process sends it, one at a time, as it becomes free. Nothing is shared but the ``out_dir``: the
per-slide locks (:mod:`zoomfeat.features.locks`) keep other processes (other shards, machines) out,
and a slide another process holds is skipped as in a single-process run.

Worker 0 plans every slide (one look at each slide's existing outputs, before any work) and sends
the plans to the main process, which refuses the run on bags of another config and hands each
slide out with its plan: each worker runs it through the same per-slide executor as a
single-process run (:func:`zoomfeat.features.slide_extraction.execute_slide`), observed through
its hooks. The main process owns the one progress display and the one run summary: workers send it messages
(model loaded, slide started, tiles done, slide result) over their own pipe; no lock is shared
between workers, so a worker killed at any moment cannot block the others. A worker that dies
(SIGKILL, out of memory, a crashed driver) takes down only the slide it was extracting: that slide
is recorded as failed (a rerun redoes it; its lock died with the process and its bags were never
published), and the other workers take the remaining slides. A worker whose device stops working
(a CUDA error after a failed slide) retires the same way.

Features do not depend on which worker extracted a slide: the per-tile noise is keyed by (seed,
slide, magnification, x, y), every model call is per tile, and rows are written in grid order
(docs/ARCHITECTURE.md, "Determinism").
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.families import SlidePlan
from zoomfeat.features.slide_extraction import SlideCancelled, SlideHooks, SlideResult, config_clash_error
from zoomfeat.runtime import stopping
from zoomfeat.runtime.disk import DiskFullError
from zoomfeat.runtime.errors import ConfigError
from zoomfeat.slide.manifest import SlideSpec

#: seconds between two progress messages of one worker
PROGRESS_EVERY_S = 0.5


def resolve_devices(spec: Any) -> list[str] | None:
    """The device names of a ``devices=`` setting (``None``: no pool, one process on ``device``).

    ``all``: every CUDA device; a list: ints are CUDA indices, strings device names (``cpu``,
    ``cuda:1``, ``"2"``). Every device is checked (:func:`~zoomfeat.runtime.device.resolve_device`).

    Raises:
        ConfigError: an empty list, an unknown or unavailable device, ``all`` without CUDA.
    """
    if spec is None:
        return None
    import torch

    from zoomfeat.runtime.device import resolve_device

    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if n == 0:
                raise ConfigError(
                    "devices=all but this machine has no CUDA device; use devices=null (one process on "
                    "device=...) or a list such as devices=[cpu,cpu]"
                )
            return [f"cuda:{i}" for i in range(n)]
        spec = [s for s in text.strip("[]").split(",") if s.strip()]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ConfigError(f"devices={spec!r}: use null, all, or a list such as [0,1,2,3] or [cpu,cpu]")
    names = []
    for entry in spec:
        text = str(entry).strip().lower()
        if text.isdigit():
            text = f"cuda:{text}"
        names.append(str(resolve_device(text)))
    return names


def worker_threads(devices: Sequence[str], cpus: int | None = None) -> int:
    """torch threads of one worker: the cores shared out among the CPU workers (each >= 1); a GPU
    worker's main thread only feeds its device (its DataLoader workers read), so 2 at most."""
    cpus = cpus or os.cpu_count() or 1
    n_cpu = sum(d == "cpu" for d in devices)
    if n_cpu:
        return max(1, cpus // len(devices))
    return max(1, min(2, cpus // len(devices)))


def worker_loaders(cfg: ExtractConfig, devices: Sequence[str], cpus: int | None = None) -> int:
    """DataLoader workers per worker: ``num_workers`` as given, else (``auto``) 0 on the CPU and the
    cores shared out among the GPU workers (<= 8 each, one core left per worker for its main thread)."""
    if str(cfg.num_workers) != "auto":
        return int(cfg.num_workers)
    cpus = cpus or os.cpu_count() or 1
    n_gpu = sum(d != "cpu" for d in devices)
    if not n_gpu:
        return 0
    return max(1, min(8, cpus // n_gpu - 1))


# ------------------------------------------------------------------------------------------ worker


def _worker_main(index: int, conn: Any, *, device: str, cfg: ExtractConfig, out_dir: str,
                 slides: list[SlideSpec], threads: int, plan_all: bool) -> None:  # fmt: skip
    """A worker process: load the models on ``device`` (worker 0 with ``plan_all``: plan every
    slide), then extract the slides it is sent, each with its plan."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # a terminal's Ctrl-C and a scheduler's SIGTERM reach the workers too: the main process decides
    # (it cancels the slides in hand through the pipe, below, and ends the workers)
    stopping.ignore_stop_signals()
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # pragma: no cover - already set
        pass
    from zoomfeat.features.pipeline import Extractor

    try:
        ex = Extractor(cfg)
        plans = ex.plan_slides(slides, out_dir) if plan_all else None
        conn.send(("ready", index, plans))
    except BaseException as err:  # noqa: BLE001 - reported to the main process, which raises it
        conn.send(("fatal", index, _picklable(err), traceback.format_exc()))
        return
    # a message from the main process while a slide runs means "stop": the slide is cancelled
    # between batches (nothing of it published, its temporaries removed)
    hooks = dataclasses.replace(_reporting_hooks(conn, index), cancelled=conn.poll)
    from zoomfeat.slide.remote import SlideCache

    # cache_dir: each slide staged when handed out (no prefetch: the next slide is not known yet)
    cache = SlideCache(cfg.cache_dir, storage_options=cfg.storage_options) if cfg.cache_dir else None
    while True:
        msg = conn.recv()
        if msg[0] != "slide":
            break
        k, plan = msg[1], msg[2]
        spec = slides[k]
        conn.send(("start", index, k))
        try:
            result = ex.run_slide(spec, out_dir, plan=plan, hooks=hooks, cache=cache)
        except SlideCancelled:
            break  # the main process is stopping the run
        except DiskFullError as err:  # the run stops: the main process raises it
            conn.send(("fatal", index, err, ""))
            break
        conn.send(("result", index, k, result))
        if result.status == "failed" and not _device_ok(ex.device):
            conn.send(("retire", index, f"device {device} stopped working after {spec.slide_id}"))
            break
    ex.close()  # the reader processes (num_workers)
    if cache is not None:
        cache.close()
    conn.close()


def _reporting_hooks(conn: Any, index: int) -> SlideHooks:
    """Hooks that send ``("progress", worker, tiles done, tiles in all)`` to the main process, at
    most every :data:`PROGRESS_EVERY_S` seconds and when a slide's last parent is written."""
    last = [0.0]

    def on_batch(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or done == total:
            last[0] = now
            conn.send(("progress", index, done, total))

    return SlideHooks(on_batch=on_batch)


def _picklable(err: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(err).__name__}: {err}")


def _device_ok(device) -> bool:
    """Whether ``device`` still computes (a CUDA error poisons the process's context)."""
    try:
        import torch

        return float(torch.ones(4, device=device).sum().item()) == 4.0
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------------------------------ pool


@dataclass
class _Worker:
    index: int
    device: str
    process: Any
    conn: Any
    ready: bool = False
    slide: int | None = None  # index into the slide list being extracted
    tiles: tuple[int, int] = (0, 0)
    alive: bool = True

    @property
    def name(self) -> str:
        return f"{self.device}#{self.index}"


@dataclass
class PoolOutcome:
    """Per slide (in the order given): its result; and which worker extracted it."""

    results: list[Any] = field(default_factory=list)
    worker_of: dict[str, str] = field(default_factory=dict)


class DevicePool:
    """One spawned worker process per device; :meth:`run` hands out the slides and gathers results.

    Args:
        on_result: called in the main process with (SlideResult, worker name) as each slide ends.
        on_progress: called with a one-line status of the busy workers (the progress display).
    """

    def __init__(
        self,
        devices: Sequence[str],
        config: ExtractConfig,
        *,
        on_result: Callable[[Any, str], None] | None = None,
        on_progress: Callable[[str], None] | None = None,
        startup_timeout_s: float = 1800.0,
    ) -> None:
        self.devices = list(devices)
        self.config = config
        self.on_result = on_result
        self.on_progress = on_progress
        self.startup_timeout_s = startup_timeout_s
        self.workers: list[_Worker] = []
        self.slides: list[SlideSpec] = []
        self.pending: list[int] = []
        self.outcome = PoolOutcome()
        self.out_dir: str | Path = ""
        #: every slide's plan, from worker 0 (None until then, or when it died before planning)
        self.plans: list[SlidePlan] | None = None
        self.checked = False  # worker 0 has planned the slides (or died trying)

    def run(self, slides: Sequence[SlideSpec], out_dir: str | Path) -> PoolOutcome:
        """Extract ``slides`` into ``out_dir``; returns the results in the order of ``slides``.

        Raises:
            ConfigMismatchError: bags from another config exist (unless ``overwrite``), before any work.
            the worker's exception: a worker could not load the models (no weights, bad device).
        """
        self.slides = list(slides)
        self.out_dir = out_dir
        self.outcome = PoolOutcome(results=[None] * len(self.slides))
        self.pending = list(range(len(self.slides)))[::-1]  # pop() from the end: the given order
        try:
            self._start(out_dir)
            self._loop()
            for k in self.pending:  # every worker died or retired: nothing left to take these
                self._finish(k, self._failed(k, "not started: every device worker had stopped"), None)
            return self.outcome
        finally:
            self._stop()

    # ------------------------------------------------------------------ steps
    def _start(self, out_dir: str | Path) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        threads = worker_threads(self.devices)
        loaders = worker_loaders(self.config, self.devices)
        for i, dev in enumerate(self.devices):
            cfg = self.config.replace(device=dev, devices=None, progress=False, num_workers=loaders)
            parent, child = ctx.Pipe(duplex=True)
            p = ctx.Process(
                target=_worker_main,
                args=(i, child),
                kwargs={
                    "device": dev,
                    "cfg": cfg,
                    "out_dir": str(out_dir),
                    "slides": self.slides,
                    "threads": threads,
                    "plan_all": i == 0,
                },  # fmt: skip
                name=f"zoomfeat-extract-{i}",
                daemon=False,  # its DataLoader workers are its children
            )
            p.start()
            child.close()
            self.workers.append(_Worker(i, dev, p, parent))

    def _loop(self) -> None:
        from multiprocessing.connection import wait

        t0 = time.monotonic()
        while any(w.alive for w in self.workers):
            live = [w for w in self.workers if w.alive]
            ready = wait([w.conn for w in live] + [w.process.sentinel for w in live], timeout=1.0)
            if stopping.requested() is not None:  # a stop signal: no new slide, the busy ones cancelled
                busy = [self.slides[w.slide].slide_id for w in live if w.slide is not None]
                raise SlideCancelled(
                    f"{', '.join(busy)}: cancelled" if busy else "stop requested before the next slide"
                )
            if (
                not all(w.ready or w.slide is not None for w in live)
                and time.monotonic() - t0 > self.startup_timeout_s
            ):
                raise RuntimeError(
                    f"device workers did not load their models within {self.startup_timeout_s:.0f} s"
                )
            for w in live:
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):  # it exited (or was killed)
                        self._died(w)
                        continue
                    self._handle(w, msg)
                elif w.process.sentinel in ready and not w.conn.poll():
                    self._died(w)
            self._hand_out()
            self._status()

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            if w.index == 0:
                self.plans, self.checked = msg[2], True
                clash = None if self.config.overwrite else config_clash_error(self.plans or [], self.out_dir)
                if clash is not None:
                    raise clash
        elif kind == "fatal":
            err, trace = msg[2], msg[3]
            if not isinstance(err, Exception):
                err = RuntimeError(f"device worker {w.name} failed to start:\n{trace}")
            raise err
        elif kind == "start":
            w.tiles = (0, 0)
        elif kind == "progress":
            w.tiles = (msg[2], msg[3])
        elif kind == "result":
            self._finish(msg[2], msg[3], w)
            w.slide = None
        elif kind == "retire":
            w.alive = False

    def _died(self, w: _Worker) -> None:
        w.process.join(timeout=5)
        w.alive = False
        self.checked = self.checked or w.index == 0  # died before its check: the others go on
        if w.slide is not None:
            code = w.process.exitcode
            why = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            self._finish(
                w.slide, self._failed(w.slide, f"device worker {w.name} died ({why}) while extracting it"), w
            )
            w.slide = None

    def _hand_out(self) -> None:
        # worker 0 plans the slides before the first one is handed out
        if not self.checked:
            return
        for w in self.workers:
            if w.alive and w.ready and w.slide is None:
                if self.pending:
                    w.slide = self.pending.pop()
                    w.tiles = (0, 0)
                    plan = self.plans[w.slide] if self.plans else None
                    w.conn.send(("slide", w.slide, plan))
                else:
                    w.conn.send(("stop",))
                    w.ready = False  # nothing more to send it; its exit ends it

    def _status(self) -> None:
        if self.on_progress:
            busy = [
                f"{w.name} {self.slides[w.slide].slide_id} {w.tiles[0]}/{w.tiles[1] or '?'}"
                for w in self.workers
                if w.alive and w.slide is not None
            ]
            self.on_progress(" | ".join(busy))

    def _failed(self, k: int, why: str) -> SlideResult:
        spec = self.slides[k]
        return SlideResult.failure(spec.path, spec.slide_id, why)

    def _finish(self, k: int, result, w: _Worker | None) -> None:
        self.outcome.results[k] = result
        name = w.name if w else "-"
        self.outcome.worker_of[result.slide_id] = name
        if self.on_result:
            self.on_result(result, name)

    def _stop(self) -> None:
        for w in self.workers:
            if w.alive and w.process.is_alive():
                try:
                    w.conn.send(("stop",))
                except (OSError, ValueError):
                    pass
        for w in self.workers:
            # a busy worker cancels its slide at its next batch (the "stop" above) and exits
            w.process.join(timeout=60)
            if w.process.is_alive():
                w.process.kill()  # it ignores SIGTERM (stopping.ignore_stop_signals)
                w.process.join(timeout=10)
            w.conn.close()
