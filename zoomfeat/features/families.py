"""Bag families of one pass: each family's own config hash, and which of a slide's files to (re)write.

(Issues 12 and 13.) One extraction pass writes several *families* of bags, each as three sets
``{family}_20x``, ``{family}_5x`` and ``{family}_fused``:

- a *recipe family* per ZoomLDM recipe (``zoomldm`` for the default recipe, then
  ``features.recipes`` and ``features.sweep``): its recipe dict is the configuration's
  :meth:`~zoomfeat.features.config.ExtractConfig.recipe` with that recipe's timestep, taps and
  ensemble, plus ``pooling`` / ``cond_px`` only where they are not the defaults, and the weights'
  identities (:func:`~zoomfeat.features.recipes.recipe_dict`). The default recipe's dict, and so
  its config hash, is exactly that of earlier versions;
- an *encoder family* per plain encoder (``uni`` by default, or each of ``encoders=[...]``): its
  dict holds only what decides an encoder bag (:data:`~zoomfeat.features.recipes.ENCODER_RECIPE_KEYS`:
  encoder, weights identity, tiling, tissue, MPP, precision, lattice), so changing the timestep or
  adding a recipe never invalidates it. A ``uni_*`` bag of the previous version, which stores the
  full recipe and its hash, is *outdated* when its stored recipe agrees on all of those keys: the
  family is recomputed without complaint (not kept, so a set's bags never mix two hashes, which the
  benchmark refuses); when it disagrees, it is a mismatch like any other.

The two coords files carry a ``grid_hash`` of the tiling settings
(:data:`~zoomfeat.features.recipes.GRID_RECIPE_KEYS`; files of the previous version match when
their stored recipe agrees on them).

:func:`plan_slide` inspects a slide's files family by family: a complete family (every file
intact with its own hash) is left alone, byte for byte; a family with a missing, partial or
damaged file is recomputed whole; a family written with another config is a *mismatch*
(refused unless ``overwrite``, which replaces that family only). Only the families to write are
computed: ZoomLDM forwards for the missing recipes, encoders for the missing encoder families
(and the conditioning encoder whenever a recipe is missing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoomfeat.features.outputs import OutputsState, inspect_files, recipe_diff
from zoomfeat.features.recipes import (
    ENCODER_RECIPE_KEYS,
    GRID_RECIPE_KEYS,
    Recipe,
    encoder_dict,
    family_sets,
    grid_dict,
    recipe_dict,
)
from zoomfeat.features.writer import slide_outputs
from zoomfeat.runtime.provenance import canonical_json, config_hash


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

    def matches(self, attrs: dict[str, Any]) -> bool:
        """Whether a bag with file attributes ``attrs`` belongs to this family's config."""
        return attrs.get("config_hash") == self.hash

    def outdated(self, attrs: dict[str, Any]) -> bool:
        """Whether a bag is an encoder bag of the previous version with this very encoder config:
        it stored the whole recipe and its hash, and agrees on :data:`ENCODER_RECIPE_KEYS`. Such a
        family is recomputed (encoders are cheap next to ZoomLDM) rather than refused, and never
        kept beside new bags: one set's bags must share one hash for the benchmark."""
        return self.kind == "encoder" and _legacy_agrees(attrs, self.spec, ENCODER_RECIPE_KEYS)


def _stored_recipe(attrs: dict[str, Any]) -> dict[str, Any]:
    try:
        old = json.loads(attrs.get("recipe", "{}"))
    except (TypeError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def _legacy_agrees(attrs: dict[str, Any], spec: dict[str, Any], keys: tuple[str, ...]) -> bool:
    """A file of the previous version (full recipe stored, with ``timestep``) agreeing on ``keys``."""
    old = _stored_recipe(attrs)
    return "timestep" in old and all(canonical_json(old.get(k)) == canonical_json(spec.get(k)) for k in keys)


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
class SlidePlan:
    """What exists of one slide's outputs, family by family, and what a run must write.

    Attributes:
        families: ``{family: OutputsState}`` (``complete`` / ``absent`` / ``partial`` / ``damaged``
            / ``mismatch`` / ``outdated``, as :func:`~zoomfeat.features.outputs.inspect_files`).
        coords: ``{20: state, 5: state}`` of the two coords files.
        attrs: attributes of every intact file (for the slide identity check).
    """

    families: dict[str, OutputsState] = field(default_factory=dict)
    coords: dict[int, str] = field(default_factory=dict)
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    coords_detail: str = ""

    @property
    def mismatched(self) -> list[str]:
        return [f for f, st in self.families.items() if st.state == "mismatch"]

    def to_write(self) -> list[str]:
        """Families to compute and write: every one not complete (mismatches only with overwrite)."""
        return [f for f, st in self.families.items() if st.state != "complete"]

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


def plan_slide(out_dir: str | Path, slide_id: str, tile_px: int, families: dict[str, Family],
               grid: dict[str, Any]) -> SlidePlan:  # fmt: skip
    """Inspect a slide's existing outputs family by family (see the module header).

    Args:
        out_dir: the output root; slide_id: the slide; tile_px: the tile size (directory names).
        families: the pass's families (:func:`pass_families`); grid: :func:`grid_spec`.

    Returns:
        The :class:`SlidePlan`.
    """
    plan = SlidePlan()
    for name, fam in families.items():
        paths = slide_outputs(out_dir, slide_id, tile_px, sets=fam.sets, coords=False)
        st = inspect_files(paths, fam.matches, ("features", "coords"))
        if st.state == "mismatch" and all(fam.matches(a) or fam.outdated(a) for a in st.attrs.values()):
            st = OutputsState("outdated", "written by the previous version (same encoder config): recomputed")
        elif st.state == "mismatch":
            bad = next(a for a in st.attrs.values() if not fam.matches(a))
            keys = None if fam.kind == "recipe" else ENCODER_RECIPE_KEYS
            st.detail = recipe_diff(bad, fam.hash, fam.spec, keys)
        plan.families[name] = st
        plan.attrs.update(st.attrs)
    ghash = config_hash(grid)
    details = []
    for mag in (20, 5):
        key = f"patches_{mag}x"
        paths = {key: slide_outputs(out_dir, slide_id, tile_px, sets=(), coords=True)[key]}
        st = inspect_files(paths, lambda a: a.get("grid_hash") == ghash or _legacy_agrees(a, grid, GRID_RECIPE_KEYS),
                      ("coords",))  # fmt: skip
        plan.coords[mag] = st.state
        plan.attrs.update(st.attrs)
        if st.state == "mismatch":
            a = next(iter(st.attrs.values()))
            old = a.get("grid") or canonical_json({k: _stored_recipe(a).get(k) for k in GRID_RECIPE_KEYS})
            details.append(f"{key}: tile grid {old} -> {canonical_json(grid)}")
        elif st.state == "damaged":
            details.append(st.detail)
    plan.coords_detail = "; ".join(details)
    return plan
