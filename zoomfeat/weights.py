"""Shared check of a weight file's keys against a module's: one wording for every loader."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def names_preview(keys: list[str], limit: int = 12) -> str:
    """The first ``limit`` names, comma-separated, with a count of the rest."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def key_mismatch_lines(
    found: Mapping[str, Any], expected: Mapping[str, Any], optional: tuple[str, ...] = ()
) -> list[str]:
    """Lines naming missing / unexpected / misshapen keys (values: tensors or shapes); [] when they fit.

    Expected keys starting with a prefix in ``optional`` may be absent.
    """
    missing = [k for k in expected if k not in found and not k.startswith(optional or ("\0",))]
    unexpected = [k for k in found if k not in expected]
    misshapen = [
        f"{k} (file {list(_shape(found[k]))}, model {list(_shape(expected[k]))})"
        for k in expected
        if k in found and _shape(found[k]) != _shape(expected[k])
    ]
    lines = []
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {names_preview(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {names_preview(unexpected)}")
    if misshapen:
        lines.append(f"  misshapen keys ({len(misshapen)}): {names_preview(misshapen)}")
    return lines
