"""Extraction with a tile store (``store=DIR``; docs/tile-store.md, format in :mod:`zoomfeat.tilestore`).

The decision is made once, with the slide's plan (:meth:`~zoomfeat.features.families.ExtractionPass.plan`):

- ``read``: the slide's entry is complete, of this tiling, models and precision, and holds every
  embedding job the run needs (and the latents when a recipe is to be computed): the run reads the
  grid, the latents and the embeddings from the store and runs only the Summarizer and the UNet.
  No slide pixel is read (no tissue detection, no region), no VQ encoding, no encoder call.
- ``write``: the slide is computed from its pixels and the entry written with it; the run then
  computes everything the store holds (:meth:`~zoomfeat.features.families.Work.full`: every job on
  all 17 tiles of each parent, the latents of every kept tile), whatever sets are written.
- ``fill``: the slide's bags are all complete but its entry is absent, damaged or lacks a job or
  the latents of this pass (a cohort extracted before it had a store): the run reads the slide and
  computes only what the store holds (:meth:`~zoomfeat.features.families.Work.full`), writes the
  entry, and writes or touches no bag, no coords file and no preview.
- ``refuse``: the entry under this slide id is of another tiling, other weights or precision
  (:meth:`~zoomfeat.tilestore.StoreEntry.differences`), and ``overwrite`` is off: one
  :class:`~zoomfeat.tilestore.StoreMismatchError` line, nothing touched. (An entry of another slide
  file is refused the same way once the slide is open: :func:`check_store`.)
- ``""``: no store, or the slide computes nothing (its bags and its entry complete).

A damaged entry (unreadable, truncated, unfinished) is recomputed after a warning line.

Equality with a fresh run: the store keeps ``z0`` and the embeddings as the float32 tensors the
fresh run computes, and the ZoomLDM queue is fed the same pieces in the same order, so the UNet
batches are the same; a feature read from the store equals a fresh run's bit for bit at the same
batch size, and within ``batch_atol`` (tests/features/conftest.py: oneDNN's blocking by batch
size) at another.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoomfeat.features.data import NoiseSpec
from zoomfeat.features.noise import tile_noise
from zoomfeat.runtime.units import PARENT_MAG_INDEX, magnification
from zoomfeat.slide.grid import Children
from zoomfeat.tilestore import (
    CHILDREN,
    MAG5,
    MAG20,
    StoreEntry,
    StoreMismatchError,
    StoreReader,
    StoreWriter,
    inspect_entry,
    weights_fingerprint,
)


class DamagedStoreWarning(UserWarning):
    """A tile-store entry is damaged (unreadable, truncated, unfinished): recomputed and rewritten."""


@dataclass
class StorePlan:
    """One slide's tile-store decision (module header).

    Attributes:
        store: the store directory; entry: what :func:`~zoomfeat.tilestore.inspect_entry` found.
        use: ``read`` | ``write`` | ``fill`` | ``refuse`` | ``""``.
        differences: for ``refuse`` (and an overwritten entry), what differs.
    """

    store: Path
    entry: StoreEntry
    use: str = ""
    differences: list[str] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        """Whether the run writes the entry (``write`` or ``fill``): it then computes everything the
        store holds (:meth:`~zoomfeat.features.families.Work.full`)."""
        return self.use in ("write", "fill")


def store_key(pass_: Any) -> dict[str, Any]:
    """The key of the entries a pass writes (without the slide identity, added per slide)."""
    if getattr(pass_, "_store_key", None) is not None:
        return dict(pass_._store_key)
    m, cfg = pass_.models, pass_.cfg
    jobs = {
        job: {
            "encoder": str(getattr(m.encoders[job], "name", "")),
            "checkpoint": m.checkpoint_identity(job),
            "px": m.job_px(job),
            "dim": m.job_dim(job),
        }
        for job in m.jobs
    }
    ssl_job = None
    if m.model is not None:  # training's ssl: the conditioning encoder with its own preprocessing
        ssl_job = next((j for j in m.jobs if m.encoders[j] is m.encoder and m.job_px(j) is None), None)
    enc = m.encoders[ssl_job] if ssl_job is not None else None
    key = {
        "grid_hash": pass_.grid_hash,
        "grid": pass_.grid,
        "vq": weights_fingerprint(m.model.vq.state_dict()) if m.model is not None else "",
        "vq_checkpoint": m.checkpoint_identity("zoomldm") if m.model is not None else "",
        "precision": str(cfg.precision),
        "tile_px": int(cfg.tile_px),
        "jobs": jobs,
        "ssl_job": ssl_job,
        "encoder": (
            f"{enc.name}:{getattr(enc, 'checkpoint_hash', '') or enc.checkpoint_id}"
            if enc is not None
            else ""
        ),
    }
    pass_._store_key = key
    return dict(key)


def plan_store(pass_: Any, slide_id: str, *, computes: bool, jobs: set[str], latents: bool) -> StorePlan:
    """The slide's :class:`StorePlan` (module header).

    Args:
        pass_: the :class:`~zoomfeat.features.families.ExtractionPass` (``cfg.store`` set).
        slide_id: the slide; computes: whether the run computes anything of it.
        jobs: the embedding jobs the run needs; latents: whether it needs the latents (a recipe).
    """
    cfg = pass_.cfg
    entry = inspect_entry(cfg.store, slide_id)
    plan = StorePlan(Path(cfg.store), entry)
    if not computes:  # the bags are complete: fill the store only, when it lacks the slide
        return _plan_fill(pass_, plan)
    if entry.state == "complete":
        plan.differences = entry.differences(store_key(pass_))
        if plan.differences and not cfg.overwrite:
            plan.use = "refuse"
            return plan
        holds = set(entry.jobs) >= set(jobs) and (entry.latents or not latents)
        if not plan.differences and holds and not cfg.preview:  # a preview paints the slide's thumbnail
            plan.use = "read"
            return plan
    plan.use = "write"
    return plan


def store_only(plan: Any) -> bool:
    """Whether a slide whose bags are all complete (a :class:`~zoomfeat.features.families.SlidePlan`)
    is still claimed for its tile-store entry: ``fill`` (written) or ``refuse`` (one line)."""
    return plan.store is not None and plan.store.use in ("fill", "refuse")


def _plan_fill(pass_: Any, plan: StorePlan) -> StorePlan:
    """The store's use for a slide whose bags are all complete: ``fill`` when its entry is absent,
    damaged or lacks a job or the latents of this pass (everything the pass would store), ``refuse``
    for an entry of another tiling, weights or precision (unless ``overwrite``: ``fill``), else
    ``""`` (the slide is skipped)."""
    entry, m = plan.entry, pass_.models
    if entry.state == "complete":
        plan.differences = entry.differences(store_key(pass_))
        if plan.differences and not pass_.cfg.overwrite:
            plan.use = "refuse"
            return plan
        holds = set(entry.jobs) >= set(m.jobs) and (entry.latents or m.model is None)
        if holds and not plan.differences:
            return plan
    plan.use = "fill"
    return plan


def check_store(plan: StorePlan, identity: dict[str, Any], *, overwrite: bool, warn: bool) -> str:
    """The use of the store for the open slide (``identity``: :meth:`Slide.identity`): refuse an entry
    of another slide or config (unless ``overwrite``), warn about a damaged one (recomputed).

    Raises:
        StoreMismatchError: the entry is another slide's, or of another tiling, weights or precision.
    """
    entry, rec_path = plan.entry, plan.entry.paths["record"]
    if entry.state == "complete" and plan.use in ("read", "write", "fill", "refuse"):
        old = entry.record.get("slide", {})
        why = []
        q_old, q_new = str(old.get("quickhash", "")), str(identity.get("quickhash", ""))
        if q_old and q_new and q_old != q_new:
            why.append(f"quickhash {q_old[:12]} vs {q_new[:12]}")
        if int(old.get("size", -1)) != int(identity.get("size", -1)):
            why.append(f"file size {old.get('size')} vs {identity.get('size')} bytes")
        if why and not overwrite:
            raise StoreMismatchError(
                f"{rec_path}: this tile-store entry came from {old.get('path', '?')}, not from "
                f"{identity.get('path')} ({', '.join(why)}); not reusing or replacing it: use another "
                "store dir, rename the slide, or pass overwrite=true to replace the entry"
            )
        if why:
            plan.use = "fill" if plan.use == "fill" else "write"
    if plan.use == "refuse":
        raise StoreMismatchError(
            f"{rec_path}: this tile-store entry was made with another tiling, weights or precision "
            f"({'; '.join(plan.differences)}); not reusing or replacing it: use another store dir, "
            "or pass overwrite=true to replace the entry"
        )
    if entry.state == "damaged" and plan.writes and warn:
        warnings.warn(
            f"damaged tile-store entry, recomputing it: {entry.detail}", DamagedStoreWarning, stacklevel=3
        )
    return plan.use


@dataclass
class StoredGrid:
    """The tile grid of a store entry: what the extraction reads of a
    :class:`~zoomfeat.slide.grid.TileGrid` (parents, children, coords attributes, magnifications)."""

    parents: np.ndarray
    children: Children
    attrs: dict[str, dict[str, Any]]
    tile_size_level0: dict[int, int]
    mag: float = magnification(MAG20)
    parent_mag: float = magnification(PARENT_MAG_INDEX)

    @classmethod
    def read(cls, reader: StoreReader) -> StoredGrid:
        g = reader.grid()
        n = len(g["children_xy"])
        children = Children(
            xy=np.asarray(g["children_xy"], np.int64),
            parent=np.repeat(np.arange(n // CHILDREN, dtype=np.int64), CHILDREN),
            tissue=np.asarray(g["children_tissue"], np.float32),
            kept=np.asarray(g["children_kept"], bool),
        )
        return cls(
            np.asarray(g["parents"], np.int64).reshape(-1, 2),
            children,
            g["coords_attrs"],
            g["tile_size_level0"],
        )

    def __len__(self) -> int:
        return len(self.parents)

    def coords_attrs(self, slide: Any, which: str = "child") -> dict[str, Any]:
        """The coords attributes stored with the entry, named after ``slide``."""
        return {**self.attrs[which], "name": slide.slide_id}


def grid_for_store(grid: Any, slide: Any) -> dict[str, Any]:
    """A :class:`~zoomfeat.slide.grid.TileGrid` (or :class:`StoredGrid`) as :class:`StoreWriter` takes it."""
    return {
        "parents": grid.parents,
        "children_xy": grid.children.xy,
        "children_kept": grid.children.kept,
        "children_tissue": grid.children.tissue,
        "coords_attrs": {w: grid.coords_attrs(slide, w) for w in ("child", "parent")},
        "tile_size_level0": (
            grid.tile_size_level0
            if isinstance(grid, StoredGrid)
            else {MAG20: grid.patch_size_level0, MAG5: grid.parent_patch_size_level0}
        ),
    }


def open_writer(pass_: Any, slide: Any, grid: Any) -> StoreWriter:
    """The slide's :class:`StoreWriter` (temporary files at their final sizes)."""
    key = {**store_key(pass_), "slide": slide.identity()}
    m = pass_.models
    return StoreWriter(
        pass_.cfg.store,
        slide.slide_id,
        key=key,
        grid=grid_for_store(grid, slide),
        latent_shape=tuple(m.latent_shape) if m.model is not None else None,
    )


class StoreParents(Dataset):
    """The kept parents of a store entry, as :class:`~zoomfeat.features.data.ParentRegions` gives
    them but with no pixels: item ``i`` is ``index``, ``emb`` ``{job: float32 (17, D)}``, with
    ``latents`` also ``z20`` (n_kept_i, C, h, w) and ``z5`` (C, h, w), and the tiles' noise
    ``noise20`` / ``noise5`` drawn exactly as :class:`ParentRegions` draws it."""

    def __init__(self, reader: StoreReader, grid: StoredGrid, noise: NoiseSpec, *, jobs: list[str],
                 latents: bool) -> None:  # fmt: skip
        self.reader, self.grid, self.noise = reader, grid, noise
        self.jobs, self.latents = list(jobs), latents
        self.kept = grid.children.kept.reshape(-1, CHILDREN)

    def __len__(self) -> int:
        return len(self.grid.parents)

    def __getitem__(self, i: int) -> dict[str, Any]:
        got = self.reader.parent(i, jobs=self.jobs, latents=self.latents)
        ns, xy = self.noise, self.grid.children.xy
        rows = np.flatnonzero(self.kept[i]) + i * CHILDREN
        if ns.draws:
            noise20 = [tile_noise(ns.seed, ns.slide_id, self.grid.mag, xy[k, 0], xy[k, 1], ns.latent_shape, ns.draws)
                       for k in rows]  # fmt: skip
            n20 = torch.stack(noise20) if len(rows) else torch.zeros((0, ns.draws, *ns.latent_shape))
            px, py = self.grid.parents[i]
            n5 = tile_noise(ns.seed, ns.slide_id, self.grid.parent_mag, px, py, ns.latent_shape, ns.draws)
        else:
            n20 = torch.zeros((len(rows), 0, *ns.latent_shape))
            n5 = torch.zeros((0, *ns.latent_shape))
        item: dict[str, Any] = {"index": i, "noise20": n20, "noise5": n5,
                                "emb": {j: torch.from_numpy(v) for j, v in got["emb"].items()}}  # fmt: skip
        if self.latents:
            item["z20"] = torch.from_numpy(np.ascontiguousarray(got["z20"]))
            item["z5"] = torch.from_numpy(np.ascontiguousarray(got["z5"]))
        return item
