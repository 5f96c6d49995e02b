"""A slide's outputs: whether existing bags can be reused, and the provenance written into new ones.

(docs/ARCHITECTURE.md, "Bag format".) Every bag carries ``config_hash``, the short SHA-256 of the
canonical JSON of the *recipe* (:meth:`~zoomfeat.features.config.ExtractConfig.recipe` with the
weights' identities in place of the checkpoint settings), and the recipe itself. Existing bags with
the same hash and ``complete=True`` are reused; bags with another hash are a mismatch, reported as
the list of recipe keys that differ (``timestep: 200 -> 300``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zoomfeat.bags import read_attrs
from zoomfeat.runtime.provenance import canonical_json


def output_state(paths: Mapping[str, Path], config_hash: str, recipe: Mapping[str, Any]) -> tuple[str, str]:
    """The state of a slide's existing outputs.

    Args:
        paths: ``{output name: final path}`` (:func:`~zoomfeat.features.writer.slide_outputs`).
        config_hash: the hash of this run's recipe; recipe: that recipe (for the diff).

    Returns:
        (``"complete"`` | ``"absent"`` | ``"partial"`` | ``"mismatch"``, detail); the detail of a
        mismatch lists the recipe keys that differ.
    """
    present, mismatched = 0, []
    for name, path in paths.items():
        if not path.is_file():
            continue
        try:
            attrs = read_attrs(path)
        except OSError:
            mismatched.append((name, {}))
            continue
        if attrs.get("config_hash") != config_hash:
            mismatched.append((name, attrs))
        elif attrs.get("complete"):
            present += 1
    if mismatched:
        return "mismatch", recipe_diff(mismatched[0][1], config_hash, recipe)
    if present == len(paths):
        return "complete", ""
    return ("partial" if present else "absent"), ""


def recipe_diff(attrs: Mapping[str, Any], config_hash: str, recipe: Mapping[str, Any]) -> str:
    """``"key: old -> new; ..."`` between the recipe stored in a bag's ``attrs`` and ``recipe``."""
    try:
        old = json.loads(attrs.get("recipe", "{}"))
    except (TypeError, ValueError):
        old = {}
    if not old:
        return f"written by another tool or version (config hash {attrs.get('config_hash', 'none')} vs {config_hash})"
    keys = sorted(set(old) | set(recipe))
    diffs = [
        f"{k}: {old.get(k)!r} -> {recipe.get(k)!r}"
        for k in keys
        if canonical_json(old.get(k)) != canonical_json(recipe.get(k))
    ]
    return "; ".join(diffs) or f"config hash {attrs.get('config_hash')} vs {config_hash}"


def bag_attrs(extractor: Any, slide: Any) -> dict[str, Any]:
    """File attributes of every bag of ``slide`` written by ``extractor`` (a
    :class:`~zoomfeat.features.pipeline.Extractor`): identity, recipe and provenance."""
    from zoomfeat.runtime.version import __version__

    cfg, models = extractor.cfg, extractor.models
    config = cfg.to_dict()
    del config["inputs"]  # the run's slide list, not this slide's settings
    return {
        "zoomfeat_version": __version__,
        "config_hash": extractor.config_hash,
        "config": canonical_json({**config, "resolved_device": str(extractor.device)}),
        "recipe": canonical_json(extractor.recipe),
        "slide_id": slide.slide_id,
        "slide_path": str(slide.path),
        "mpp": float(slide.mpp),
        "level0_magnification": float(slide.magnification),
        "model": cfg.model.name,
        "model_checkpoint_id": str(models.model.checkpoint_id),
        "model_checkpoint_hash": str(models.model.checkpoint_hash or ""),
        "ssl_encoder": cfg.encoder.name,
        "encoder_checkpoint_id": str(models.encoder.checkpoint_id),
        "encoder_checkpoint_hash": str(models.encoder.checkpoint_hash or ""),
        "timestep": int(cfg.features.timestep),
        "taps": json.dumps(list(cfg.features.taps)),
        "tap_channels": json.dumps(models.tap_dims),
        "ensemble": int(cfg.features.ensemble),
        "seed": int(cfg.seed),
        "pooling": "global average per tap, concatenated in taps order",
        "precision": cfg.precision,
        "tile_px": int(cfg.tile_px),
        "min_tissue": float(cfg.tissue.min_tissue),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def set_attrs(model_name: str, encoder_name: str, dims: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Per-feature-set attributes (``encoder``, ``target_magnification``, ``description``, fused ``split``)."""
    z, u = model_name, encoder_name
    dz, du = dims["zoomldm_20x"], dims["uni_20x"]
    fused = "concat(20x tile feature, its 5x parent's feature)"
    return {
        "zoomldm_20x": {"encoder": z, "target_magnification": 20,
                        "description": "ZoomLDM 20x tile (own 1x1 UNI grid, mag 0)"},
        "zoomldm_5x": {"encoder": z, "target_magnification": 5,
                       "description": "ZoomLDM 5x tile (4x4 children UNI grid, mag 2)"},
        "zoomldm_fused": {"encoder": z, "target_magnification": 20, "description": fused,
                          "split": json.dumps([dz, dz])},
        "uni_20x": {"encoder": u, "target_magnification": 20, "description": f"{u} class token of the 20x tile"},
        "uni_5x": {"encoder": u, "target_magnification": 5, "description": f"{u} class token of the 5x tile"},
        "uni_fused": {"encoder": u, "target_magnification": 20, "description": fused,
                      "split": json.dumps([du, du])},
    }  # fmt: skip
