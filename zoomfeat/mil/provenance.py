"""Where a feature set's bags came from: one recipe per set, recorded in the report.

Every bag ``zoomfeat.extract`` writes carries ``config_hash`` (the short SHA-256 of its recipe),
the recipe itself as JSON (``recipe``; the full config in ``config``) and the recipe's main
entries as attributes (``timestep``, ``taps``, ``model_checkpoint_id``, ``encoder_checkpoint_id``;
``docs/ARCHITECTURE.md``, "Bag format"). A benchmark compares feature *sets*, so all bags of one
set must come from one recipe: :func:`check_one_recipe` refuses a set whose bags carry several
config hashes with a :class:`~zoomfeat.runtime.errors.BagError` that lists the groups (hash ->
count and example slides) and the recipe keys that differ (``timestep: 200 vs 300``).

Bags without these attributes (other tools' bags, e.g. TRIDENT's; instance CSVs) are accepted:
their provenance is recorded as unknown. A set mixing bags with and without a hash is refused
like any other mix. :func:`summarize_provenance` gives the per-set record the report writes
(summary.md, run.json).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from zoomfeat.runtime.errors import BagError

#: the marker zoomfeat's own bags carry (a bag with it must also carry ``complete = True``)
ZOOMFEAT_MARKERS = ("config_hash", "zoomfeat_version")
#: recipe entries the report shows (bag attribute names), in this order
RECIPE_KEYS = (
    "encoder",
    "model",
    "model_checkpoint_id",
    "ssl_encoder",
    "encoder_checkpoint_id",
    "timestep",
    "taps",
    "ensemble",
    "seed",
    "precision",
)
UNKNOWN = "unknown"


def is_zoomfeat_bag(attrs: Mapping[str, Any]) -> bool:
    """Whether a bag's file attributes say zoomfeat wrote it (then it must be marked complete)."""
    return any(k in attrs for k in ZOOMFEAT_MARKERS)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def bag_provenance(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"config_hash", "recipe" (dict, for the diff), **RECIPE_KEYS present}`` of one bag."""
    record: dict[str, Any] = {"config_hash": str(attrs.get("config_hash", UNKNOWN))}
    recipe = _json(attrs.get("recipe"))
    if not isinstance(recipe, dict):
        config = _json(attrs.get("config"))
        recipe = config if isinstance(config, dict) else {}
    record["recipe"] = recipe
    for key in RECIPE_KEYS:
        if key in attrs:
            record[key] = _json(attrs[key])
    return record


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """``["timestep: 200 vs 300", ...]``: the entries (recipe, then attributes) where ``a`` and ``b`` differ."""
    fa = {**_flat(a.get("recipe") or {}), **{k: a[k] for k in RECIPE_KEYS if k in a}}
    fb = {**_flat(b.get("recipe") or {}), **{k: b[k] for k in RECIPE_KEYS if k in b}}
    dump = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    return [
        f"{k}: {fa.get(k, 'absent')} vs {fb.get(k, 'absent')}"
        for k in sorted(set(fa) | set(fb))
        if dump(fa.get(k)) != dump(fb.get(k))
    ]


def check_one_recipe(
    feature_set: str, source: Any, records: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Check every bag of one set (``{slide_id: bag_provenance}``) shares one config hash.

    Returns the set's record (:func:`summarize_provenance`); several hashes are a
    :class:`BagError` listing each group (hash -> count, example slides) and what differs.
    """
    groups: dict[str, list[str]] = {}
    for slide, rec in records.items():
        groups.setdefault(rec["config_hash"], []).append(slide)
    if len(groups) > 1:
        ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
        listed = "; ".join(f"{h} -> {len(s)} bag(s) (e.g. {', '.join(s[:3])})" for h, s in ordered)
        first = records[ordered[0][1][0]]
        diffs = []
        for h, slides in ordered[1:]:
            d = recipe_differences(first, records[slides[0]])
            diffs.append(f"{ordered[0][0]} vs {h}: {', '.join(d[:6]) if d else 'no recipe recorded'}")
        raise BagError(
            f"feature set {feature_set!r} ({source}): its bags were written with {len(groups)} different "
            f"configs (config hash -> bags: {listed}); differences: {'; '.join(diffs)}. "
            f"Re-extract the odd ones with one config, or give each config its own feature set directory"
        )
    return summarize_provenance(next(iter(records.values()), {}), len(records))


def summarize_provenance(record: Mapping[str, Any], n_bags: int = 0) -> dict[str, Any]:
    """The report's record of one set: config hash and recipe entries (``unknown`` without them)."""
    out: dict[str, Any] = {"config_hash": record.get("config_hash", UNKNOWN), "bags": int(n_bags)}
    out.update({k: record[k] for k in RECIPE_KEYS if k in record})
    return out


def describe(provenance: Mapping[str, Any]) -> str:
    """One line for summary.md: ``config hash 1a2b..., timestep 200, taps [...], ...``."""
    if provenance.get("config_hash", UNKNOWN) == UNKNOWN:
        return "provenance unknown (the bags carry no config hash: another tool's bags or an instance CSV)"
    parts = [f"config hash {provenance['config_hash']}"]
    parts += [f"{k} {provenance[k]}" for k in RECIPE_KEYS if k in provenance]
    return ", ".join(parts)


def provenance_table(provenance: Mapping[str, Mapping[str, Any]], sets: Sequence[str]) -> list[str]:
    """Markdown lines: one bullet per feature set."""
    return [f"{fs}: {describe(provenance[fs])}" for fs in sets if fs in provenance]
