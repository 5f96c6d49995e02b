"""A slide's outputs: whether existing bags can be reused, and the provenance written into new ones.

(docs/ARCHITECTURE.md, "Bag format".) Every bag carries ``config_hash``, the short SHA-256 of the
canonical JSON of its family's *recipe* (:mod:`zoomfeat.features.families`: for the default
family :meth:`~zoomfeat.features.config.ExtractConfig.recipe` with the weights' identities in
place of the checkpoint settings), and the recipe itself. Existing bags with
the same hash and ``complete=True`` are reused; bags with another hash are a mismatch, reported as
the list of recipe keys that differ (``timestep: 200 -> 300``).

Every file also records the identity of its slide (openslide's quickhash, the file size and the
resolved path; not in the hash, so moving a slide folder keeps its bags valid): outputs of
another slide under the same slide id are never reused nor overwritten (:func:`identity_clash`).
A file that cannot be read or lacks its completeness mark is *damaged*: its family is recomputed
(:mod:`zoomfeat.features.families` applies these checks family by family).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zoomfeat.bags import file_problem, read_attrs
from zoomfeat.runtime.errors import InputError
from zoomfeat.runtime.provenance import canonical_json

#: file attributes that record where a bag's slide came from (not part of the config hash)
IDENTITY_ATTRS = ("slide_quickhash", "slide_size", "slide_path")


class SlideIdentityError(InputError):
    """Existing bags under a slide id came from another slide file (same name, other content)."""


@dataclass
class OutputsState:
    """What exists of one slide's outputs.

    ``state``: ``"complete"`` (every file intact with this config), ``"absent"``, ``"partial"``
    (some intact files with this config, none damaged), ``"damaged"`` (some file cannot be read or
    lacks its completeness mark: recompute), ``"mismatch"`` (an intact file from another config) or
    ``"outdated"`` (files of the previous version with this config: recompute, see
    :mod:`zoomfeat.features.families`).
    """

    state: str
    detail: str = ""
    #: ``[(path, what is wrong)]`` of damaged files
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    #: attributes of the intact files, by output name
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)


def inspect_files(
    paths: Mapping[str, Path],
    matches: Callable[[Mapping[str, Any]], bool],
    datasets: tuple[str, ...] | None = None,
) -> OutputsState:
    """The :class:`OutputsState` of a group of output files (one family's bags, a coords file, ...).

    Args:
        paths: ``{output name: final path}``.
        matches: whether an intact file's attributes belong to this run (same hash, or a legacy rule).
        datasets: the datasets a file must hold to be intact (None: by name, ``coords`` for the
            ``patches_*`` coords files, ``features`` and ``coords`` for bags).
    """
    present, mismatched, damaged, intact = 0, False, [], {}
    for name, path in paths.items():
        if not path.is_file():
            continue
        need = datasets or (("coords",) if name.startswith("patches") else ("features", "coords"))
        problem = file_problem(path, need)
        if problem:
            damaged.append((path, problem))
            continue
        attrs = read_attrs(path)
        intact[name] = attrs
        if matches(attrs):
            present += 1
        else:
            mismatched = True
    if mismatched:
        state = OutputsState("mismatch")
    elif damaged:
        state = OutputsState("damaged", "; ".join(f"{p}: {why}" for p, why in damaged))
    elif present == len(paths):
        state = OutputsState("complete")
    else:
        state = OutputsState("partial" if present else "absent")
    state.damaged, state.attrs = damaged, intact
    return state


def slide_identity_attrs(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The bag attributes of a slide identity (:meth:`zoomfeat.slide.Slide.identity`)."""
    return {
        "slide_quickhash": str(identity.get("quickhash", "")),
        "slide_size": int(identity.get("size", -1)),
        "slide_path": str(identity.get("path", "")),
    }


def identity_clash(
    attrs: Mapping[str, Mapping[str, Any]], identity: Mapping[str, Any]
) -> tuple[str, str] | None:
    """``(stored slide path, why)`` when existing outputs came from another slide than ``identity``.

    Two slides are the same when their file sizes and (where both have one) openslide quickhashes
    agree; the path only informs, so a moved slide folder still matches. Outputs written before
    identities were recorded (no ``slide_size``) are not checked.
    """
    new_q, new_size = str(identity.get("quickhash", "")), int(identity.get("size", -1))
    for a in attrs.values():
        if "slide_size" not in a:
            continue
        old_q, old_size = str(a.get("slide_quickhash", "")), int(a.get("slide_size", -1))
        why = []
        if old_q and new_q and old_q != new_q:
            why.append(f"openslide quickhash {old_q[:12]} vs {new_q[:12]}")
        if old_size != new_size:
            why.append(f"file size {old_size} vs {new_size} bytes")
        if why:
            return str(a.get("slide_path", "?")), ", ".join(why)
    return None


def recipe_diff(
    attrs: Mapping[str, Any], config_hash: str, recipe: Mapping[str, Any], keys: Any = None
) -> str:
    """``"key: old -> new; ..."`` between the recipe stored in a bag's ``attrs`` and ``recipe``
    (only ``keys`` when given: an encoder family's keys in a bag storing a full recipe)."""
    try:
        old = json.loads(attrs.get("recipe", "{}"))
    except (TypeError, ValueError):
        old = {}
    if not old:
        return f"written by another tool or version (config hash {attrs.get('config_hash', 'none')} vs {config_hash})"
    keys = sorted(set(old) | set(recipe)) if keys is None else list(keys)
    diffs = [
        f"{k}: {old.get(k)!r} -> {recipe.get(k)!r}"
        for k in keys
        if canonical_json(old.get(k)) != canonical_json(recipe.get(k))
    ]
    return "; ".join(diffs) or f"config hash {attrs.get('config_hash')} vs {config_hash}"


def bag_attrs(extractor: Any, slide: Any) -> dict[str, Any]:
    """File attributes every file of ``slide`` written by ``extractor`` (a
    :class:`~zoomfeat.features.pipeline.Extractor`) carries: identity and provenance. The
    family-specific ones (config hash, recipe) come from :func:`family_attrs`."""
    from zoomfeat.runtime.version import __version__

    cfg = extractor.cfg
    config = cfg.to_dict()
    del config["inputs"]  # the run's slide list, not this slide's settings
    return {
        "zoomfeat_version": __version__,
        "config": canonical_json({**config, "resolved_device": str(extractor.device)}),
        "slide_id": slide.slide_id,
        **slide_identity_attrs(slide.identity()),
        "mpp": float(slide.mpp),
        "level0_magnification": float(slide.magnification),
        "precision": cfg.precision,
        "tile_px": int(cfg.tile_px),
        "min_tissue": float(cfg.tissue.min_tissue),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def family_attrs(family: Any, cfg: Any, models: Any) -> dict[str, Any]:
    """File attributes of one family's bags (a :class:`~zoomfeat.features.families.Family`).

    Every family: ``config_hash`` and ``recipe`` (its own). Recipe families add the recipe's
    entries (``timestep``, ``taps`` as JSON, ``pooling``, ``ensemble``, ``cond_px``,
    ``recipe_name``; the benchmark's recipe report reads them), the model's and the conditioning
    encoder's weights; encoder families their encoder's weights and no recipe entries.
    """
    out: dict[str, Any] = {"config_hash": family.hash, "recipe": canonical_json(family.spec)}
    if family.kind == "recipe":
        r = family.recipe
        cond = models.encoders[models.cond_job(r.cond_px)]
        out.update({
            "recipe_name": family.name,
            "model": cfg.model.name,
            "model_checkpoint_id": str(models.model.checkpoint_id),
            "model_checkpoint_hash": str(models.model.checkpoint_hash or ""),
            "ssl_encoder": cfg.encoder.name,
            "encoder_checkpoint_id": str(cond.checkpoint_id),
            "encoder_checkpoint_hash": str(cond.checkpoint_hash or ""),
            "timestep": int(r.timestep),
            "taps": json.dumps(list(r.taps)),
            "tap_channels": json.dumps({t: int(models.tap_dims[t]) for t in r.taps}),
            "ensemble": int(r.ensemble),
            "seed": int(cfg.seed),
            "pooling": r.pooling,
            "cond_px": int(r.cond_px),
        })  # fmt: skip
    else:
        enc = models.encoders[family.name]
        out.update({
            "encoder_family": family.name,
            "ssl_encoder": family.encoder,
            "encoder_checkpoint_id": str(enc.checkpoint_id),
            "encoder_checkpoint_hash": str(enc.checkpoint_hash or ""),
        })  # fmt: skip
    return out


def set_attrs(family: Any, dims: Mapping[str, int], model_name: str = "") -> dict[str, dict[str, Any]]:
    """Per-set attributes of one family (``encoder``, ``target_magnification``, ``description``,
    fused ``split``).

    Args:
        family: a :class:`~zoomfeat.features.families.Family`; dims: ``{set: D}``;
        model_name: the ZoomLDM config name (recipe families' ``encoder``).
    """
    s20, s5, sf = family.sets
    fused = "concat(20x tile feature, its 5x parent's feature)"
    if family.kind == "recipe":
        r = family.recipe
        what = f"ZoomLDM t={r.timestep} {'+'.join(r.taps)} {r.pooling}" + (
            f" x{r.ensemble}" if r.ensemble > 1 else ""
        )
        enc = model_name
        d20 = f"{what}, 20x tile (own 1x1 UNI grid, mag 0)"
        d5 = f"{what}, 5x tile (4x4 children UNI grid, mag 2)"
    else:
        enc = family.encoder
        d20, d5 = f"{enc} embedding of the 20x tile", f"{enc} embedding of the 5x tile"
    return {
        s20: {"encoder": enc, "target_magnification": 20, "description": d20},
        s5: {"encoder": enc, "target_magnification": 5, "description": d5},
        sf: {"encoder": enc, "target_magnification": 20, "description": fused,
             "split": json.dumps([int(dims[s20]), int(dims[s5])])},
    }  # fmt: skip


def sets_to_write(
    families: list[Any], cfg: Any, models: Any
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """``({set: D}, {set: attributes})`` of every set of ``families`` (family and per-set attributes
    merged), for :class:`~zoomfeat.features.writer.SlideBagWriter`."""
    dims, per_set = {}, {}
    for fam in families:
        own = family_attrs(fam, cfg, models)
        for name, a in set_attrs(fam, models.dims, cfg.model.name).items():
            dims[name], per_set[name] = int(models.dims[name]), {**own, **a}
    return dims, per_set
