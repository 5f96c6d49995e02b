"""Bag families of one pass, and the plan of one slide: what each family needs, from one look at the disk.

(Issues 12, 13 and 19; docs/ARCHITECTURE.md, "How a slide is planned".) One extraction pass
writes several *families* of bags, each as three sets ``{family}_20x``, ``{family}_5x`` and
``{family}_fused``:

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
is left alone, byte for byte; a family with a missing, partial, damaged or outdated file is
recomputed whole; a family written with another config is a *mismatch* (refused unless
``overwrite``, which replaces that family only). Only the families to write are computed:
ZoomLDM forwards for the missing recipes, encoders for the missing encoder families (and the
conditioning encoder whenever a recipe is missing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    @property
    def sets(self) -> tuple[str, str, str]:
        return family_sets(self.name)

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
    out: dict[str, Family] = {}
    for r in models.recipes:
        b = {**base, "model_checkpoint": models.checkpoint_identity("zoomldm"),
             "encoder_checkpoint": models.checkpoint_identity(models.cond_job(r.cond_px))}  # fmt: skip
        spec = recipe_dict(b, r)
        out[r.name] = Family(r.name, "recipe", spec, config_hash(spec), recipe=r)
    for fam, name in models.encoder_families.items():
        spec = encoder_dict(base, name, models.checkpoint_identity(fam))
        out[fam] = Family(fam, "encoder", spec, config_hash(spec), encoder=name)
    return out


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

    @classmethod
    def build(cls, cfg: Any, *, device: Any, models: Any) -> ExtractionPass:
        grid = grid_spec(cfg)
        return cls(cfg, device, models, pass_families(cfg, models), grid, config_hash(grid))

    @property
    def sets(self) -> list[str]:
        """Every bag set of the pass, family by family."""
        return [s for fam in self.families.values() for s in fam.sets]

    def outputs(self, out_dir: str | Path, slide_id: str) -> dict[str, Path]:
        """Final paths of one slide's bags (every family's three sets) and two coords files."""
        return slide_outputs(out_dir, slide_id, tile_px=self.cfg.tile_px, sets=self.sets)

    def plan(self, out_dir: str | Path, slide_id: str, *, source: str = "") -> SlidePlan:
        """:func:`plan_slide` for this pass."""
        return plan_slide(out_dir, slide_id, tile_px=self.cfg.tile_px, families=self.families,
                          grid=self.grid, source=source)  # fmt: skip


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
        sets: the family's bag sets (all written when the family is).
        damaged: ``[(path, what is wrong)]``.
    """

    state: str
    detail: str = ""
    sets: tuple[str, ...] = ()
    damaged: list[tuple[Path, str]] = field(default_factory=list)


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

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "before_publish": []}

    @property
    def mismatched(self) -> list[str]:
        return [f for f, st in self.families.items() if st.state == "mismatch"]

    def to_write(self) -> list[str]:
        """Families to compute and write: every one not complete (mismatches only with overwrite)."""
        return [f for f, st in self.families.items() if st.state != "complete"]

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
        out = [f"{f}: {s.detail}" for f, s in self.families.items() if s.state == "damaged"]
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
        paths = slide_outputs(out_dir, slide_id, tile_px=tile_px, sets=fam.sets, coords=False)
        st = inspect_files(_look(paths, fam.output_kind, plan), fam.hash)
        if st.state == "mismatch":
            bad = next(iter(st.foreign.values()))
            keys = None if fam.kind == "recipe" else ENCODER_RECIPE_KEYS
            st.detail = bad.foreign or recipe_diff(bad.attrs, fam.hash, fam.spec, keys=keys)
        plan.families[name] = FamilyPlan(st.state, st.detail, fam.sets, st.damaged)
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
