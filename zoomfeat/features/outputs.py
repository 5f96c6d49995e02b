"""A slide's outputs: what an existing file holds, and the provenance written into new ones.

(docs/ARCHITECTURE.md, "Bag format".) Every bag carries ``config_hash``, the short SHA-256 of the
canonical JSON of its family's *recipe* (:mod:`zoomfeat.features.families`: for the default
family :meth:`~zoomfeat.features.config.ExtractConfig.recipe` with the weights' identities in
place of the checkpoint settings), and the recipe itself; the coords files carry ``grid_hash``
of the tiling settings. Existing files with the same hash and ``complete=True`` are reused;
files with another hash are a mismatch, reported as the list of recipe keys that differ
(``timestep: 200 -> 300``).

:func:`read_output` is the one function that reads an existing output file (one open), whatever
its ``format_version`` (:data:`zoomfeat.bags.FORMAT_VERSION`): files of format 0 (written before
the attribute existed) are read into today's attributes there, and nowhere else; every hash is
then compared one way.

Every file also records the identity of its slide (openslide's quickhash, the file size and the
resolved path; not in the hash, so moving a slide folder keeps its bags valid): outputs of
another slide under the same slide id are never reused nor overwritten (:func:`identity_clash`).
A file that cannot be read or lacks its completeness mark is *damaged*: its family is recomputed
(:mod:`zoomfeat.features.families` applies these checks family by family).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from zoomfeat.bags import FORMAT_VERSION, read_header
from zoomfeat.features.recipes import ENCODER_RECIPE_KEYS, GRID_RECIPE_KEYS
from zoomfeat.runtime.errors import InputError
from zoomfeat.runtime.provenance import canonical_json, config_hash

#: file attributes that record where a bag's slide came from (not part of the config hash)
IDENTITY_ATTRS = ("slide_quickhash", "slide_size", "slide_path")

#: what an output file holds: a recipe family's bag, an encoder family's bag, a coords file
OutputKind = Literal["recipe", "encoder", "coords"]


class SlideIdentityError(InputError):
    """Existing bags under a slide id came from another slide file (same name, other content)."""


@dataclass
class OutputFile:
    """One existing output file as :func:`read_output` reads it.

    Attributes:
        problem: what is wrong with it (``""``: intact); a damaged file is recomputed.
        attrs: its attributes in today's format (those of an intact file).
        content_hash: the hash of the settings it was written with, by today's rules
            (``config_hash`` of a bag, ``grid_hash`` of a coords file).
        stale: intact and readable, but its stored attributes are those of an older format that
            the files written today must not be mixed with: it is rewritten when its hash matches.
        foreign: why no rule of this version reads its format (a newer ``format_version``); such
            a file is never matched, reused or overwritten.
    """

    problem: str
    attrs: dict[str, Any] = field(default_factory=dict)
    content_hash: str | None = None
    stale: bool = False
    foreign: str = ""


def stored_recipe(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe dict stored in a file's ``recipe`` attribute (``{}`` when none or unreadable)."""
    try:
        old = json.loads(attrs.get("recipe", "{}"))
    except (TypeError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def read_output(path: Path, *, kind: OutputKind) -> OutputFile:
    """Read one existing output file (a single open): intact or damaged, its attributes, its hash.

    Formats: ``format_version`` 1 files carry today's attributes. Format 0 (no ``format_version``)
    is today's layout, written by earlier versions, and two older shapes of it are read here:

    - a coords file without ``grid_hash`` stored the full recipe: its grid is that recipe's
      :data:`GRID_RECIPE_KEYS`, and ``grid_hash = config_hash(grid)``;
    - an encoder bag whose stored recipe is a full ZoomLDM recipe (it has ``timestep``) carries
      that recipe's hash: its content hash is ``config_hash`` of the recipe's
      :data:`ENCODER_RECIPE_KEYS` (what the encoder family hashes today), and it is ``stale``:
      recomputed rather than kept, since one set's bags must share one stored hash.

    A file of a newer format is ``foreign``: never matched, reused nor overwritten.
    """
    datasets = ("coords",) if kind == "coords" else ("features", "coords")
    header = read_header(path, datasets)
    if header.problem:
        return OutputFile(header.problem)
    attrs, version = dict(header.attrs), header.format_version
    if not 0 <= version <= FORMAT_VERSION:
        why = (
            f"written by a newer zoomfeat (bag format_version {version}; this version reads up to {FORMAT_VERSION}): "
            "upgrade zoomfeat or use another out_dir"
        )
        return OutputFile("", attrs, foreign=why)
    key = "grid_hash" if kind == "coords" else "config_hash"
    out = OutputFile("", attrs, attrs.get(key))
    if version == 0:  # the older shapes of format 0
        old = stored_recipe(attrs)
        if kind == "coords" and "grid_hash" not in attrs:
            grid = {k: old.get(k) for k in GRID_RECIPE_KEYS}
            attrs.setdefault("grid", canonical_json(grid))
            out.content_hash = config_hash(grid) if "timestep" in old else None
        elif kind == "encoder" and "timestep" in old:
            out.content_hash = config_hash({k: old.get(k) for k in ENCODER_RECIPE_KEYS})
            out.stale = True
    return out


@dataclass
class OutputsState:
    """What exists of a group of output files (one family's bags, a coords file).

    ``state``: ``"complete"`` (every file intact with this config), ``"absent"``, ``"partial"``
    (some intact files with this config, none damaged), ``"damaged"`` (some file cannot be read or
    lacks its completeness mark: recompute), ``"mismatch"`` (an intact file from another config, or
    of a format this version does not read) or ``"outdated"`` (intact files of this config in an
    older format that must not be kept: recompute, see :func:`read_output`).
    """

    state: str
    detail: str = ""
    #: ``[(path, what is wrong)]`` of damaged files
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    #: attributes of the intact files, by output name
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the intact files that do not match (another config or format), by output name
    foreign: dict[str, OutputFile] = field(default_factory=dict)


def inspect_files(files: Mapping[str, tuple[Path, OutputFile | None]], want_hash: str) -> OutputsState:
    """The :class:`OutputsState` of a group of output files.

    Args:
        files: ``{output name: (final path, its read_output, or None when the file does not exist)}``.
        want_hash: the hash of this run's settings for the group.
    """
    present, stale, damaged, intact, foreign = 0, False, [], {}, {}
    for name, (path, f) in files.items():
        if f is None:
            continue
        if f.problem:
            damaged.append((path, f.problem))
            continue
        intact[name] = f.attrs
        if not f.foreign and f.content_hash == want_hash:
            present += 1
            stale = stale or f.stale
        else:
            foreign[name] = f
    if foreign:
        state = OutputsState("mismatch")
    elif stale:
        state = OutputsState("outdated", "written in an older bag format (same settings): recomputed")
    elif damaged:
        state = OutputsState("damaged", "; ".join(f"{p}: {why}" for p, why in damaged))
    elif present == len(files):
        state = OutputsState("complete")
    else:
        state = OutputsState("partial" if present else "absent")
    state.damaged, state.attrs, state.foreign = damaged, intact, foreign
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
        # openslide's quickhash and zoomfeat's zf1: content hash (other readers) are compared only with their own kind
        if old_q and new_q and old_q != new_q and old_q.startswith("zf1:") == new_q.startswith("zf1:"):
            why.append(f"quickhash {old_q[:12]} vs {new_q[:12]}")
        if old_size != new_size:
            why.append(f"file size {old_size} vs {new_size} bytes")
        if why:
            return str(a.get("slide_path", "?")), ", ".join(why)
    return None


def recipe_diff(
    attrs: Mapping[str, Any], want_hash: str, recipe: Mapping[str, Any], *, keys: Any = None
) -> str:
    """``"key: old -> new; ..."`` between the recipe stored in a bag's ``attrs`` and ``recipe``
    (only ``keys`` when given: an encoder family's keys in a bag storing a full recipe)."""
    old = stored_recipe(attrs)
    if not old:
        return f"written by another tool or version (config hash {attrs.get('config_hash', 'none')} vs {want_hash})"
    keys = sorted(set(old) | set(recipe)) if keys is None else list(keys)
    diffs = [
        f"{k}: {old.get(k)!r} -> {recipe.get(k)!r}"
        for k in keys
        if canonical_json(old.get(k)) != canonical_json(recipe.get(k))
    ]
    return "; ".join(diffs) or f"config hash {attrs.get('config_hash')} vs {want_hash}"


def bag_attrs(slide: Any, *, cfg: Any, device: Any) -> dict[str, Any]:
    """File attributes every file of ``slide`` written with ``cfg`` (an
    :class:`~zoomfeat.features.config.ExtractConfig`) on ``device`` carries: identity and
    provenance. The family-specific ones (config hash, recipe) come from :func:`family_attrs`."""
    from zoomfeat.runtime.version import __version__

    config = cfg.to_dict()
    del config["inputs"]  # the run's slide list, not this slide's settings
    return {
        "zoomfeat_version": __version__,
        "config": canonical_json({**config, "resolved_device": str(device)}),
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
