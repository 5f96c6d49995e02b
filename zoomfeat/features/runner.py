"""Extract many slides: one model load, per-slide isolation of failures, a run summary.

Every slide is independent and idempotent: complete bags with the same config hash are
skipped, a slide another process is working on (its lock is held) is left to that process,
and a slide that fails (corrupt file, no resolution, read error) is recorded with its reason
while the others go on. Bags left by a *different* configuration stop the run before any work
(unless ``overwrite``, which replaces them), so a changed timestep never silently reuses or
mixes old bags.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.devices import DevicePool, resolve_devices
from zoomfeat.features.pipeline import Extractor, SlideHooks, SlideResult, TileBar, refuse_config_clashes
from zoomfeat.features.slide_extraction import SlideCancelled
from zoomfeat.runtime import stopping
from zoomfeat.runtime.atomic import atomic_path, ensure_dir
from zoomfeat.runtime.disk import DiskFullError, is_disk_full
from zoomfeat.slide.manifest import SlideSpec, shard
from zoomfeat.slide.remote import SlideCache


@dataclass
class RunSummary:
    """Results of one run (one shard)."""

    results: list[SlideResult] = field(default_factory=list)
    seconds: float = 0.0
    shard_index: int = 0
    shard_count: int = 1
    out_dir: str = ""
    csv_path: Path | None = None
    #: ``devices=`` runs: the devices, and which worker (``cuda:1#1``) extracted each slide
    devices: list[str] = field(default_factory=list)
    worker_of: dict[str, str] = field(default_factory=dict)
    #: the bag families of the run (ZoomLDM recipes, then encoders)
    families: list[str] = field(default_factory=list)
    #: the sets each family writes as files (``bags.sets`` less a derived fused set)
    file_sets: list[str] = field(default_factory=lambda: ["20x", "5x", "fused"])

    def by_status(self, status: str) -> list[SlideResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[SlideResult]:
        return self.by_status("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    def report(self) -> str:
        done, skipped, locked, failed = (self.by_status(s) for s in ("done", "skipped", "locked", "failed"))
        # slides whose bags were complete (the tile-store entry written only), and slides given
        # only fused files derived from their bags (no tile read): neither counts as extracted
        fills = [r for r in done if r.store == "fill" and not r.written]
        from_bags = [r for r in done if r.derived and not r.tiles]
        neither = {id(r) for r in fills + from_bags}
        extracted = [r for r in done if id(r) not in neither]
        tiles = sum(r.tiles for r in extracted)
        busy = sum(r.seconds for r in extracted)
        shard_txt = f" (shard {self.shard_index + 1}/{self.shard_count})" if self.shard_count > 1 else ""
        if self.devices:
            shard_txt += f" on {len(self.devices)} devices ({', '.join(self.devices)})"
        other = (
            f", {len(fills)} tile-store entr{'y' if len(fills) == 1 else 'ies'} filled" if fills else ""
        ) + (f", {len(from_bags)} given fused files from their bags" if from_bags else "")
        lines = [
            f"zoomfeat extract{shard_txt}: {len(self.results)} slide(s) in {self.seconds:.1f} s: {len(extracted)} extracted "
            f"({tiles} tiles, {tiles / busy if busy else 0:.2f} tiles/s){other}, {len(skipped)} already complete, "
            f"{len(locked)} held by another process, {len(failed)} failed",
            f"bags: {self.out_dir}"
            + (
                f" (families: {', '.join(self.families)}; sets {{family}}_{', _'.join(self.file_sets)})"
                if self.families
                else ""
            ),
        ]
        if self.csv_path:
            lines.append(f"per-slide log: {self.csv_path}")
        if failed:
            lines.append("FAILED slides:")
            lines += [f"  {r.path}: {r.error}" for r in failed]
        return "\n".join(lines)

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["slide_id", "path", "status", "tiles_20x", "tiles_5x", "seconds", "error", "store", "fused_from_bags"])  # fmt: skip
            for r in self.results:
                row = [r.slide_id, r.path, r.status, r.n20, r.n5, f"{r.seconds:.2f}", r.error]
                w.writerow([*row, r.store, " ".join(r.derived)])  # the tile store's use; families derived
        self.csv_path = path
        return path


def extract_slides(
    slides: Sequence[SlideSpec],
    out_dir: str | Path,
    config: ExtractConfig,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    extractor: Extractor | None = None,
    echo: Callable[[str], None] = print,
    hooks: SlideHooks | None = None,
) -> RunSummary:
    """Extract ``slides`` (this shard's part of them) into ``out_dir`` with ``config``.

    Model loading errors (no weights, wrong encoder for the model) and bags from another
    config raise; per-slide errors are recorded in the summary and the run goes on.

    With ``config.devices`` (``all``, ``[0,1,2,3]``, ``[cpu,cpu]``) the shard's slides are shared
    out among one worker process per device (:mod:`zoomfeat.features.devices`); a worker that dies
    takes only its current slide down (recorded as failed; a rerun redoes it).

    Every slide is planned once (:meth:`Extractor.plan_slides`: one look at its existing outputs),
    before any work, and its plan carried into its run (:func:`zoomfeat.features.slide_extraction.execute_slide`).
    ``hooks``: observers of each slide in this process (default: a tile progress bar with
    ``config.progress``); device workers report to the one display here instead.
    """
    t0 = time.perf_counter()
    mine = shard(sorted(slides, key=lambda s: str(s.path)), shard_index, shard_count)
    summary = RunSummary(shard_index=shard_index, shard_count=shard_count, out_dir=str(out_dir))
    summary.families = [r.name for r in config.recipes()] + list(config.encoder_families())
    summary.file_sets = list(config.bags.files())
    if not mine:
        echo(f"zoomfeat extract: no slides in shard {shard_index + 1}/{shard_count} ({len(slides)} in total)")
        return summary
    ensure_dir(out_dir)  # a clear error before the models load
    devices = resolve_devices(config.devices) if extractor is None else None
    if devices is not None and len(devices) == 1:  # one device: this process, no pool
        config, devices = config.replace(device=devices[0], devices=None), None
    try:
        if devices is not None:
            summary.results = _extract_with_pool(
                mine, out_dir, config, devices=devices, echo=echo, summary=summary
            )
        else:
            ex = extractor or Extractor(config)
            try:
                _extract_here(mine, out_dir, ex, echo=echo, summary=summary, hooks=hooks)
            finally:
                ex.close()  # the reader processes (num_workers)
    except SlideCancelled as cancelled:  # a stop signal (runtime.stopping): the one line says what is done
        summary.seconds = time.perf_counter() - t0
        _write_log(summary, out_dir, shard_index=shard_index, shard_count=shard_count)
        signum = stopping.requested() or 15
        raise stopping.StopRequested(signum, _stopped(summary, mine, out_dir, str(cancelled))) from None
    except DiskFullError:
        summary.seconds = time.perf_counter() - t0
        _write_log(summary, out_dir, shard_index=shard_index, shard_count=shard_count)
        raise
    summary.seconds = time.perf_counter() - t0
    _write_log(summary, out_dir, shard_index=shard_index, shard_count=shard_count)
    return summary


def _stopped(summary: RunSummary, mine: list[SlideSpec], out_dir: str | Path, why: str) -> str:
    """The stop line: slides finished in this run, those abandoned, how many left, what to do.

    ``why``: the :class:`SlideCancelled` message, ``"{ids}: cancelled; ..."`` when slides were cut short.
    """
    done = [r for r in summary.results if r is not None]
    abandoned = why.split(": cancelled", 1)[0] if ": cancelled" in why else ""
    n_abandoned = len(abandoned.split(", ")) if abandoned else 0
    left = len(mine) - len(done) - n_abandoned
    return (
        f"{len(done)} slide(s) finished in this run"
        + (f", {abandoned} abandoned (nothing of it published, temporary files removed)" if abandoned else "")
        + f", {left} not started; bags are in {out_dir}. Rerun the same command to continue (finished slides are kept)"
    )


def _write_log(summary: RunSummary, out_dir: str | Path, *, shard_index: int, shard_count: int) -> None:
    """The run's per-slide CSV in ``out_dir/logs`` (also for a run that stopped; skipped with a
    warning when the disk is full)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (
        f"extract_{stamp}_pid{os.getpid()}"
        + (f"_shard{shard_index}of{shard_count}" if shard_count > 1 else "")
        + ".csv"
    )
    try:
        summary.write_csv(Path(out_dir) / "logs" / name)
    except OSError as err:
        if not is_disk_full(err):
            raise
        warnings.warn(
            f"{out_dir}/logs: the disk is full, the per-slide log {name} was not written", stacklevel=2
        )


def _extract_with_pool(
    mine: list[SlideSpec],
    out_dir: str | Path,
    config: ExtractConfig,
    *,
    devices: list[str],
    echo: Callable[[str], None],
    summary: RunSummary,
) -> list[SlideResult]:
    """``devices=``: one worker process per device (zoomfeat.features.devices), one display here."""
    from tqdm.auto import tqdm

    summary.devices = list(devices)
    with tqdm(
        total=len(mine), desc=f"slides on {len(devices)} devices", unit="slide", position=0,
        **({} if config.progress else {"disable": True}),
    ) as bar:  # fmt: skip

        def on_result(result: SlideResult, worker: str) -> None:
            bar.update(1)
            msg = f"[{worker}] {result.line()}"
            if config.progress:
                tqdm.write(msg)
            else:
                echo(msg)

        pool = DevicePool(devices, config, on_result=on_result, on_progress=bar.set_postfix_str)
        try:
            outcome = pool.run(mine, out_dir)
        except (SlideCancelled, DiskFullError):
            summary.results = [r for r in pool.outcome.results if r is not None]  # what finished
            raise
    summary.worker_of = outcome.worker_of
    return outcome.results


@contextlib.contextmanager
def slide_cache(config: ExtractConfig) -> Iterator[SlideCache | None]:
    """The run's :class:`~zoomfeat.slide.remote.SlideCache` with ``cache_dir`` (emptied at the end), else None."""
    if not config.cache_dir:
        yield None
        return
    with SlideCache(config.cache_dir, storage_options=config.storage_options) as cache:
        yield cache


def _or_stop(cancelled: Callable[[], bool] | None) -> Callable[[], bool]:
    """A ``cancelled`` hook that is also true once a stop signal arrived."""
    return lambda: stopping.requested() is not None or bool(cancelled is not None and cancelled())


def _extract_here(
    mine: list[SlideSpec],
    out_dir: str | Path,
    ex: Extractor,
    *,
    echo: Callable[[str], None],
    summary: RunSummary,
    hooks: SlideHooks | None,
) -> None:
    """One process, one device: every slide planned, then the slides one after the other."""
    from tqdm.auto import tqdm

    config = ex.cfg
    plans = ex.plan_slides(mine, out_dir)
    if not config.overwrite:
        refuse_config_clashes(plans, out_dir)
    if hooks is None and config.progress:
        hooks = TileBar().hooks()
    # a stop signal (runtime.stopping) cancels the slide in hand between batches (nothing published)
    hooks = dataclasses.replace(hooks or SlideHooks(), cancelled=_or_stop((hooks or SlideHooks()).cancelled))
    with (
        tqdm(
            total=len(mine),
            desc="slides",
            unit="slide",
            position=0,
            **({} if config.progress else {"disable": True}),
        ) as bar,
        slide_cache(config) as cache,
    ):
        for k, (spec, plan) in enumerate(zip(mine, plans)):
            if stopping.requested() is not None:
                raise SlideCancelled("stop requested before the next slide")
            bar.set_postfix_str(spec.slide_id)
            if cache is not None:  # cache_dir: this slide's download first, then the next one's
                cache.prefetch(spec.location)
                if k + 1 < len(mine):
                    cache.prefetch(mine[k + 1].location)
            result = ex.run_slide(spec, out_dir, plan=plan, hooks=hooks, cache=cache)
            bar.update(1)
            summary.results.append(result)
            msg = result.line()
            if config.progress:
                tqdm.write(msg)
            else:
                echo(msg)
