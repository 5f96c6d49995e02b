"""Bag families of one pass, and the plan of one slide: what each family needs, from one look at the disk.

(Issues 12, 13 and 19; docs/ARCHITECTURE.md, "How a slide is planned".) One extraction pass
writes several *families* of bags, each as the sets of ``bags.sets`` among ``{family}_20x``,
``{family}_5x`` and ``{family}_fused`` (a fused set left to be derived by readers, ``bags.fused=derived``,
has no file):

- a *recipe family* per ZoomLDM recipe (``zoomldm`` for the default recipe, then
  ``features.recipes`` and ``features.sweep``): its recipe dict is the configuration's
  :meth:`~zoomfeat.features.config.ExtractConfig.recipe` with that recipe's timestep, taps and
  ensemble, plus ``pooling`` / ``cond_px`` only where they are not the defaults, and the weights'
  identities (:func:`~zoomfeat.features.recipes.recipe_dict`);
- an *encoder family* per plain encoder (``uni`` by default, or each of ``encoders=[...]``): its
  dict holds only what decides an encoder bag (:data:`~zoomfeat.features.recipes.ENCODER_RECIPE_KEYS`:
  encoder, weights identity, tiling, tissue, MPP, precision, lattice), so changing the timestep or
  adding a recipe never invalidates it.

The two coords files carry a ``grid_hash`` of the tiling settings
(:data:`~zoomfeat.features.recipes.GRID_RECIPE_KEYS`). Each file's hash is compared one way with
its family's; files of older bag formats are read into today's attributes by one function,
:func:`~zoomfeat.features.outputs.read_output`.

:func:`plan_slide` looks at a slide's files once (one open per existing file, a ``stat`` of every
path) and returns its :class:`SlidePlan`: a complete family (every file intact with its own hash)
is left alone, byte for byte; a *partial* family (some files intact with its hash, none damaged)
writes only its missing sets; a family with a damaged or outdated file is recomputed whole; a
family written with another config is a *mismatch* (refused unless ``overwrite``, which replaces
that family only). A family whose 20x and 5x bags are complete with this config and whose only
set to write is its fused file (extracted with ``bags.fused=derived``, or the fused file missing
or damaged) has its fused file *derived from the bags* (:attr:`FamilyPlan.from_bags`): no pixel
read, no model call; a slide with nothing else to compute is not read at all
(:attr:`SlidePlan.from_bags_only`). What the sets to write need is decided once, with the plan, as a :class:`Work`
(:meth:`ExtractionPass.work`, :func:`plan_work`): which embedding job embeds the kept children,
the background children (only a recipe's conditioning job, for its 5x grid) and the 5x tile, and
whether ZoomLDM runs on the kept children and on the 5x tile.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoomfeat.features.data import ParentReaders
from zoomfeat.features.outputs import (
    IDENTITY_ATTRS,
    OutputFile,
    OutputKind,
    OutputsState,
    identity_clash,
    inspect_files,
    read_output,
    recipe_diff,
)
from zoomfeat.features.recipes import (
    ENCODER_RECIPE_KEYS,
    Recipe,
    encoder_dict,
    family_sets,
    grid_dict,
    recipe_dict,
)
from zoomfeat.features.store import StorePlan, plan_store
from zoomfeat.features.writer import PublishCheck, slide_outputs
from zoomfeat.runtime.provenance import canonical_json, config_hash
from zoomfeat.runtime.units import TILE_PX, TilePx


@dataclass(frozen=True)
class Family:
    """One bag family of a pass.

    Attributes:
        name: the family (sets ``{name}_20x``, ``{name}_5x``, ``{name}_fused``).
        kind: ``"recipe"`` (ZoomLDM) or ``"encoder"``.
        spec: the recipe dict stored in its bags; hash: its config hash.
        recipe: the :class:`Recipe` (recipe families); encoder: the registry name (encoder families).
    """

    name: str
    kind: str
    spec: dict[str, Any]
    hash: str
    recipe: Recipe | None = None
    encoder: str | None = None
    #: the sets written as files (``bags.sets`` less a derived fused set); empty: all three
    files: tuple[str, ...] = ()
    #: the embedding job the family needs: its own (encoder families) or its conditioning job (recipes)
    job: str | None = None

    @property
    def sets(self) -> tuple[str, str, str]:
        """All three sets of the family (``{name}_20x``, ``_5x``, ``_fused``), written or not."""
        return family_sets(self.name)

    @property
    def set_files(self) -> tuple[str, ...]:
        """The family's sets written as files, in the order of :attr:`sets`."""
        return self.files or self.sets

    @property
    def output_kind(self) -> OutputKind:
        return "recipe" if self.kind == "recipe" else "encoder"


def pass_families(cfg: Any, models: Any) -> dict[str, Family]:
    """The families a pass writes, recipes first, with their dicts and hashes.

    Args:
        cfg: the :class:`~zoomfeat.features.config.ExtractConfig`.
        models: the pass's :class:`~zoomfeat.features.models.FeatureModels` (weights identities).

    Returns:
        ``{family name: Family}``.
    """
    base = cfg.recipe()
    kinds = cfg.bags.files()
    out: dict[str, Family] = {}
    for r in models.recipes:
        job = models.cond_job(r.cond_px)
        b = {**base, "model_checkpoint": models.checkpoint_identity("zoomldm"),
             "encoder_checkpoint": models.checkpoint_identity(job)}  # fmt: skip
        spec = recipe_dict(b, r)
        files = tuple(f"{r.name}_{k}" for k in kinds)
        out[r.name] = Family(r.name, "recipe", spec, config_hash(spec), recipe=r, files=files, job=job)
    for fam, name in models.encoder_families.items():
        spec = encoder_dict(base, name, models.checkpoint_identity(fam))
        files = tuple(f"{fam}_{k}" for k in kinds)
        out[fam] = Family(fam, "encoder", spec, config_hash(spec), encoder=name, files=files, job=fam)
    return out


@dataclass(frozen=True)
class Work:
    """What one slide's run computes, decided once when the slide is planned ("plan once, then act").

    A kept 5x parent has 17 tiles: its kept 20x children, its background children and the 5x
    tile itself. Each embedding job embeds only the kinds it is listed under; ZoomLDM runs on the
    kept children (each with its own 1x1 grid, magnification index 0) and on the 5x tile (the 4x4
    grid of all 16 children, index 2) only where asked. :func:`plan_work` derives it from the sets
    a slide writes; :meth:`full` is everything (the work of earlier versions).

    Attributes:
        kept: jobs run on the kept 20x children (a 20x or fused set, or any recipe's conditioning).
        background: jobs run on the background children (the conditioning job of a recipe whose
            5x rows are needed: the 5x grid).
        parent: jobs run on the 5x tile (an encoder family's 5x or fused set).
        zoomldm_20x: ZoomLDM on the kept children; zoomldm_5x: ZoomLDM on the 5x tile.
    """

    kept: frozenset[str] = frozenset()
    background: frozenset[str] = frozenset()
    parent: frozenset[str] = frozenset()
    zoomldm_20x: bool = False
    zoomldm_5x: bool = False

    @classmethod
    def full(cls, jobs: Iterable[str], *, zoomldm: bool) -> Work:
        """Every job on all 17 tiles of every kept parent, and ZoomLDM (with ``zoomldm``) on the kept
        children and the 5x tile, whatever sets are written (a tile store wants all of it)."""
        every = frozenset(jobs)
        return cls(every, every, every, zoomldm, zoomldm)

    @property
    def jobs(self) -> frozenset[str]:
        """Every embedding job that runs at all."""
        return self.kept | self.background | self.parent

    @property
    def parent_tile(self) -> bool:
        """Whether anything uses the 5x tile (a job embeds it, or ZoomLDM runs on it): else the
        reader skips its 4x downsample."""
        return bool(self.parent) or self.zoomldm_5x

    def tiles(self, job: str) -> tuple[bool, bool, bool]:
        """Which tiles ``job`` embeds: (kept children, background children, the 5x tile)."""
        return (job in self.kept, job in self.background, job in self.parent)

    def slots(self, job: str, kept: np.ndarray) -> np.ndarray:
        """The tiles ``job`` embeds of one parent, as positions in its 17 tiles (children 0..15 in
        grid order, then the 5x tile at 16), given the parent's bool (16,) ``kept`` mask."""
        k, b, p = self.tiles(job)
        kept = np.asarray(kept, bool)
        children = np.flatnonzero((kept & k) | (~kept & b))
        return np.concatenate([children, [len(kept)] if p else []]).astype(np.int64)


def plan_work(write: Mapping[str, Iterable[str]], families: Mapping[str, Family]) -> Work:
    """The :class:`Work` that writing ``write`` (``{family: its sets to write}``) needs, no more.

    The rows a set needs: ``{f}_20x`` the kept children's, ``{f}_5x`` the 5x tile's, ``{f}_fused``
    both. An encoder family's job embeds the kept children for 20x rows and the 5x tile for 5x
    rows; a recipe family's 20x rows need ZoomLDM on the kept children and its conditioning job on
    them (their own 1x1 grids), its 5x rows ZoomLDM on the 5x tile and its conditioning job on all
    16 children (the 4x4 grid, background children included). Nothing else is embedded.
    """
    kept: set[str] = set()
    background: set[str] = set()
    parent: set[str] = set()
    z20 = z5 = False
    for name, sets in write.items():
        fam = families[name]
        sets = list(sets)
        rows20 = any(s.endswith(("_20x", "_fused")) for s in sets)
        rows5 = any(s.endswith(("_5x", "_fused")) for s in sets)
        job = fam.job or name
        if fam.kind == "recipe":
            z20, z5 = z20 or rows20, z5 or rows5
            if rows20 or rows5:
                kept.add(job)
            if rows5:
                background.add(job)
        else:
            if rows20:
                kept.add(job)
            if rows5:
                parent.add(job)
    return Work(frozenset(kept), frozenset(background), frozenset(parent), z20, z5)


def grid_spec(cfg: Any) -> dict[str, Any]:
    """The settings of the coords files (:data:`GRID_RECIPE_KEYS`); their hash is ``grid_hash``."""
    return grid_dict(cfg.recipe())


@dataclass
class ExtractionPass:
    """What every slide of a pass shares: the settings, the models, the families and the tile grid's
    settings. The per-slide steps take this and a :class:`SlidePlan`, nothing else.

    Attributes:
        cfg: the :class:`~zoomfeat.features.config.ExtractConfig`; device: the resolved device;
        models: the :class:`~zoomfeat.features.models.FeatureModels`; families: ``{name: Family}``
        (:func:`pass_families`); grid: :func:`grid_spec`; grid_hash: its hash.
    """

    cfg: Any
    device: Any
    models: Any
    families: dict[str, Family]
    grid: dict[str, Any]
    grid_hash: str
    #: the reader processes every slide of the pass shares (:meth:`parent_readers`), once started
    readers: ParentReaders | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, cfg: Any, *, device: Any, models: Any) -> ExtractionPass:
        grid = grid_spec(cfg)
        return cls(cfg, device, models, pass_families(cfg, models), grid, config_hash(grid))

    @property
    def sets(self) -> list[str]:
        """Every bag set the pass writes as a file (``bags.sets``, ``bags.fused``), family by family."""
        return [s for fam in self.families.values() for s in fam.set_files]

    def outputs(self, out_dir: str | Path, slide_id: str) -> dict[str, Path]:
        """Final paths of one slide's bags (every family's sets written as files) and two coords files."""
        return slide_outputs(out_dir, slide_id, tile_px=self.cfg.tile_px, sets=self.sets)

    def plan(self, out_dir: str | Path, slide_id: str, *, source: str = "") -> SlidePlan:
        """:func:`plan_slide` for this pass, with its :meth:`work`."""
        plan = plan_slide(out_dir, slide_id, tile_px=self.cfg.tile_px, families=self.families,
                          grid=self.grid, source=source)  # fmt: skip
        if self.cfg.store:  # the tile store's use, decided here once (features/store.py)
            need = plan_work(plan.sets_to_compute(), self.families)
            plan.store = plan_store(self, slide_id, computes=plan.computes, jobs=set(need.jobs),
                                    latents=need.zoomldm_20x or need.zoomldm_5x)  # fmt: skip
            rec = plan.store.entry.paths["record"]  # an entry published meanwhile: planned again
            plan.seen[str(rec)] = _fingerprint(rec)
        plan.work = self.work(plan)
        return plan

    def parent_readers(self, num_workers: int, *, pin_memory: bool) -> ParentReaders:
        """The pass's :class:`~zoomfeat.features.data.ParentReaders` (``num_workers`` processes
        reading parent regions), running: started at the first slide (again after a slide that
        ended them) and kept for the next ones. Call it before anything of a slide is open."""
        if self.readers is None or not self.readers.matches(num_workers, pin_memory=pin_memory):
            self.close()
            self.readers = ParentReaders(num_workers, pin_memory=pin_memory)
        self.readers.start()
        return self.readers

    def close(self) -> None:
        """End the reader processes, if any (a later slide starts them again)."""
        if self.readers is not None:
            self.readers.close()
            self.readers = None

    def work(self, plan: SlidePlan) -> Work:
        """What a slide's run computes: the one decision (:func:`plan_work` of the sets the plan
        computes; a fused file derived from the bags needs nothing). Override it to compute more (:meth:`Work.full`). A tile-store entry being
        written (or filled in for complete bags) holds everything: every job on all 17 tiles, the
        latents of every kept tile."""
        if plan.store is not None and plan.store.writes:
            return Work.full(self.models.jobs, zoomldm=self.models.model is not None)
        return plan_work(plan.sets_to_compute(), self.families)


#: what a plan saw of a path: (inode, size, mtime in ns), or None when it did not exist
Fingerprint = tuple[int, int, int] | None


def _fingerprint(path: Path) -> Fingerprint:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class FamilyPlan:
    """One family's existing bags and what to do with them.

    Attributes:
        state: ``complete`` (kept, byte for byte), ``absent`` / ``partial`` / ``damaged`` /
            ``outdated`` (computed and written whole), ``mismatch`` (another config: refused
            unless ``overwrite``, then written whole); see :class:`~zoomfeat.features.outputs.OutputsState`.
        detail: for a mismatch the recipe keys that differ, for damage the files and why.
        sets: the family's bag sets written as files (``bags.sets``, ``bags.fused``).
        damaged: ``[(path, what is wrong)]``.
        write: the sets this run writes: none when complete; the missing ones when ``partial``
            (the family's intact files are kept); else every one of ``sets``.
        from_bags: ``write`` is the fused set alone, derived from the family's 20x and 5x bags
            (both intact with this config; the fused file missing or damaged): rows
            ``concat(f20[i], f5[parent_idx[i]])`` read from those files, no model call.
    """

    state: str
    detail: str = ""
    sets: tuple[str, ...] = ()
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    write: tuple[str, ...] = ()
    from_bags: bool = False


@dataclass
class SlidePlan:
    """What exists of one slide's outputs, family by family, and what a run must write: decided once,
    from one look at the disk (:func:`plan_slide`), and carried through the slide's run.

    Attributes:
        slide_id: the slide; source: its file (informative); out_dir, tile_px: where its outputs are.
        families: ``{family: FamilyPlan}`` in the pass's order.
        coords: ``{20: state, 5: state}`` of the two coords files; coords_detail: their mismatch or damage.
        grid_hash: the coords files' hash this plan was made for.
        identities: the slide identity attributes (:data:`IDENTITY_ATTRS`) of every intact file,
            checked against the open slide (:meth:`identity_clash`).
        seen: ``{path: (inode, size, mtime)}`` of every output path when the plan was made
            (``None``: absent); :meth:`still_current` compares them with the disk.
        expected_bytes: bytes of array data the run publishes (set when the tile grid is laid,
            before any model runs; 0 before).
        before_publish: checks run right before the temporary files are renamed into place (each
            takes no argument and raises to stop the publication; nothing is then published).
            Not pickled: each process adds its own.
    """

    slide_id: str
    out_dir: Path
    tile_px: int = TILE_PX
    source: str = ""
    families: dict[str, FamilyPlan] = field(default_factory=dict)
    coords: dict[int, str] = field(default_factory=dict)
    coords_detail: str = ""
    grid_hash: str = ""
    identities: list[dict[str, Any]] = field(default_factory=list)
    seen: dict[str, Fingerprint] = field(default_factory=dict)
    expected_bytes: int = 0
    before_publish: list[PublishCheck] = field(default_factory=list)
    #: what the run computes (:meth:`ExtractionPass.work`); decided with the plan
    work: Work = field(default_factory=Work)
    #: the tile store's decision for the slide (``store=DIR``; :mod:`zoomfeat.features.store`), None without one
    store: StorePlan | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "before_publish": []}

    @property
    def mismatched(self) -> list[str]:
        return [f for f, st in self.families.items() if st.state == "mismatch"]

    def to_write(self) -> list[str]:
        """Families to compute and write: every one not complete (mismatches only with overwrite)."""
        return [f for f, st in self.families.items() if st.state != "complete"]

    def sets_to_write(self) -> dict[str, tuple[str, ...]]:
        """``{family: the sets to write}`` of every family to write (:attr:`FamilyPlan.write`)."""
        return {f: self.families[f].write for f in self.to_write()}

    def to_compute(self) -> list[str]:
        """Families to compute (by the models): those to write, less the fused files derived from
        the bags (:attr:`FamilyPlan.from_bags`)."""
        return [f for f in self.to_write() if not self.families[f].from_bags]

    def from_bags(self) -> list[str]:
        """Families whose fused file is derived from their 20x and 5x bags."""
        return [f for f in self.to_write() if self.families[f].from_bags]

    def sets_to_compute(self) -> dict[str, tuple[str, ...]]:
        """``{family: the sets to write}`` of every family to compute (:meth:`to_compute`)."""
        return {f: self.families[f].write for f in self.to_compute()}

    @property
    def computes(self) -> bool:
        """Whether the run computes anything of the slide's bags or coords (a tile grid, pixels)."""
        return bool(self.to_compute()) or bool(self.coords_to_write())

    @property
    def from_bags_only(self) -> bool:
        """Whether the run only derives fused files from bags on disk: no family to compute, no
        coords file, no tile-store entry to write or read; the slide is opened for its identity
        only, never read."""
        store = self.store is not None and self.store.use in ("read", "write", "fill")
        return bool(self.from_bags()) and not self.computes and not store

    def reused(self) -> list[str]:
        """Families kept as they are (complete)."""
        return [f for f, st in self.families.items() if st.state == "complete"]

    def coords_to_write(self) -> list[int]:
        """Coords files (by magnification) missing, damaged or of another grid."""
        return [m for m, st in self.coords.items() if st != "complete"]

    @property
    def complete(self) -> bool:
        return not self.to_write() and not self.coords_to_write()

    @property
    def state(self) -> str:
        """The slide's overall state: ``mismatch`` > ``damaged`` > ``complete`` > ``partial`` > ``absent``."""
        states = [st.state for st in self.families.values()] + list(self.coords.values())
        for s in ("mismatch", "damaged"):
            if s in states:
                return s
        if all(s == "complete" for s in states):
            return "complete"
        return "partial" if any(s in ("complete", "partial") for s in states) else "absent"

    @property
    def detail(self) -> str:
        """For a mismatch, the families and the recipe keys that differ; for damage, the files."""
        parts = []
        want = "mismatch" if self.state == "mismatch" else "damaged"
        for f, st in self.families.items():
            if st.state == want:
                parts.append(f"{f}: {st.detail}")
        if self.coords_detail and self.state in ("mismatch", "damaged"):
            parts.append(self.coords_detail)
        return "; ".join(parts)

    def damage(self) -> list[str]:
        """One entry per damaged family (its files and why) and for damaged coords files."""
        out = [
            f"{f}: {s.detail}"
            + (" (the fused file derived again from the 20x and 5x bags)" if s.from_bags else "")
            for f, s in self.families.items()
            if s.state == "damaged"
        ]
        if self.coords_detail and any(s == "damaged" for s in self.coords.values()):
            out.append(self.coords_detail)
        return out

    def paths(self) -> dict[str, Path]:
        """Final paths of every output of the slide (all families' sets, both coords files)."""
        sets = [s for fam in self.families.values() for s in fam.sets]
        return slide_outputs(self.out_dir, self.slide_id, tile_px=self.tile_px, sets=sets)

    def identity_clash(self, identity: dict[str, Any]) -> tuple[str, str] | None:
        """``(stored slide path, why)`` when existing outputs came from another slide than ``identity``
        (:func:`~zoomfeat.features.outputs.identity_clash`)."""
        return identity_clash({str(i): a for i, a in enumerate(self.identities)}, identity)

    def still_current(self) -> bool:
        """Whether every output path is as the plan saw it (same inode, size and mtime, or still
        absent): a ``stat`` per path, no open."""
        return all(_fingerprint(Path(p)) == fp for p, fp in self.seen.items())


def _look(
    files: dict[str, Path], kind: OutputKind, plan: SlidePlan
) -> dict[str, tuple[Path, OutputFile | None]]:
    """Stat every path, then read each existing file once (:func:`read_output`)."""
    out: dict[str, tuple[Path, OutputFile | None]] = {}
    for name, path in files.items():
        fp = _fingerprint(path)
        plan.seen[str(path)] = fp
        out[name] = (path, None if fp is None else read_output(path, kind=kind))
    return out


def _identities(st: OutputsState, plan: SlidePlan) -> None:
    for a in st.attrs.values():
        ident = {k: a[k] for k in IDENTITY_ATTRS if k in a}
        if ident and ident not in plan.identities:
            plan.identities.append(ident)


def plan_slide(out_dir: str | Path, slide_id: str, *, tile_px: TilePx | int, families: dict[str, Family],
               grid: dict[str, Any], source: str = "") -> SlidePlan:  # fmt: skip
    """Look at a slide's existing outputs once and decide what each family needs (see the module header).

    Every output path is ``stat``-ed and every existing file opened once (:func:`read_output`).

    Args:
        out_dir: the output root; slide_id: the slide; tile_px: the tile size (directory names).
        families: the pass's families (:func:`pass_families`); grid: :func:`grid_spec`.
        source: the slide file (recorded in the plan, informative).

    Returns:
        The :class:`SlidePlan`.
    """
    ghash = config_hash(grid)
    plan = SlidePlan(slide_id, Path(out_dir), int(tile_px), str(source), grid_hash=ghash)
    for name, fam in families.items():
        paths = slide_outputs(out_dir, slide_id, tile_px=tile_px, sets=fam.set_files, coords=False)
        st = inspect_files(_look(paths, fam.output_kind, plan), fam.hash)
        if st.state == "mismatch":
            bad = next(iter(st.foreign.values()))
            keys = None if fam.kind == "recipe" else ENCODER_RECIPE_KEYS
            st.detail = bad.foreign or recipe_diff(bad.attrs, fam.hash, fam.spec, keys=keys)
        write = fam.set_files
        if st.state == "complete":
            write = ()
        elif st.state == "partial":  # the intact files of this config stay; only the others are written
            write = tuple(s for s in fam.set_files if s not in st.attrs)
        s20, s5, sf = fam.sets
        # the fused file alone is missing or damaged, the 20x and 5x bags intact with this config
        # (partial and damaged states hold no file of another config or format): derived from them
        from_bags = (
            st.state in ("partial", "damaged")
            and {s20, s5, sf} <= set(fam.set_files)
            and s20 in st.attrs
            and s5 in st.attrs
            and sf not in st.attrs
            and all(p == paths[sf] for p, _ in st.damaged)
        )
        if from_bags:
            write = (sf,)
        plan.families[name] = FamilyPlan(st.state, st.detail, fam.set_files, st.damaged, write, from_bags)
        _identities(st, plan)
    details = []
    coords = slide_outputs(out_dir, slide_id, tile_px=tile_px, sets=())
    for mag in (20, 5):
        key = f"patches_{mag}x"
        st = inspect_files(_look({key: coords[key]}, "coords", plan), ghash)
        plan.coords[mag] = st.state
        _identities(st, plan)
        if st.state == "mismatch":
            bad = next(iter(st.foreign.values()))
            details.append(
                bad.foreign or f"{key}: tile grid {bad.attrs.get('grid')} -> {canonical_json(grid)}"
            )
        elif st.state == "damaged":
            details.append(st.detail)
    plan.coords_detail = "; ".join(details)
    return plan
