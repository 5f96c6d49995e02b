"""Which slides to extract: files, directories and manifest CSVs, and the deterministic shard split.

A manifest CSV has a path column (``path``, ``slide_path``, ``slide``, ``wsi`` or ``filename``;
relative paths are resolved against the CSV's directory) and optionally an ``mpp`` column that
overrides the resolution of that slide. Directories contribute every file with a slide
extension directly inside them (not recursive; hidden files ignored).

The list is de-duplicated and sorted by path, then ``shard(index, count)`` keeps every
``count``-th slide starting at ``index``: the same on every machine, whatever order the
inputs were given in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zoomfeat.runtime.errors import ConfigError, InputError
from zoomfeat.slide.naming import slide_id_from_path
from zoomfeat.slide.reader import MissingInputError

SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".qptiff",
)
PATH_COLUMNS = ("path", "slide_path", "slide", "wsi", "filename", "file")


@dataclass(frozen=True, order=True)
class SlideSpec:
    """One slide to extract (``mpp`` overrides the file's resolution for this slide only)."""

    path: Path
    mpp: float | None = None

    @property
    def slide_id(self) -> str:
        """The file name without its extension; compound ones (``.ome.tiff``) whole, as TRIDENT does."""
        return slide_id_from_path(self.path)


def read_manifest(csv_path: str | Path) -> list[SlideSpec]:
    import pandas as pd

    csv_path = Path(csv_path)
    table = pd.read_csv(csv_path)
    col = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if col is None:
        raise InputError(
            f"manifest {csv_path} needs a slide path column (one of {', '.join(PATH_COLUMNS)}); it has {list(table.columns)}"
        )
    specs = []
    for _, row in table.iterrows():
        p = Path(str(row[col])).expanduser()
        if not p.is_absolute():
            p = csv_path.parent / p
        mpp = row.get("mpp") if "mpp" in table.columns else None
        mpp = None if mpp is None or (isinstance(mpp, float) and math.isnan(mpp)) else float(mpp)
        specs.append(SlideSpec(p, mpp))
    return specs


def discover(inputs: Iterable[str | Path]) -> list[SlideSpec]:
    """Slides named by files, directories and ``.csv`` manifests; sorted, without duplicates
    (a manifest's ``mpp`` for a slide also named elsewhere is kept).

    A named file or directory that does not exist is an error (a typo should not silently
    extract nothing); slides listed in a manifest are checked later, per slide.
    """
    specs: dict[Path, SlideSpec] = {}
    for item in inputs:
        p = Path(str(item)).expanduser()
        if p.is_dir():
            found = [
                SlideSpec(f)
                for f in sorted(p.iterdir())
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in SLIDE_EXTENSIONS
            ]
        elif p.suffix.lower() == ".csv" and p.is_file():
            found = read_manifest(p)
        elif p.exists():
            found = [SlideSpec(p)]
        else:
            raise MissingInputError(
                f"input {p} does not exist (give slide files, directories of slides or manifest CSVs)"
            )
        for spec in found:
            key = spec.path.resolve() if spec.path.exists() else spec.path.absolute()
            old = specs.get(key)
            if old is not None and old.mpp is not None and spec.mpp is not None and old.mpp != spec.mpp:
                raise InputError(f"{key} is listed with two different mpp values ({old.mpp} and {spec.mpp})")
            if old is None or old.mpp is None:
                specs[key] = SlideSpec(key, spec.mpp)
    out = sorted(specs.values(), key=lambda s: str(s.path))
    check_unique_ids(out)
    return out


def check_unique_ids(specs: Sequence[SlideSpec]) -> None:
    """Bags are named by slide id (file name without extension): two slides with one id would collide."""
    seen: dict[str, Path] = {}
    clashes = []
    for s in specs:
        if s.slide_id in seen:
            clashes.append(f"{seen[s.slide_id]} and {s.path}")
        seen.setdefault(s.slide_id, s.path)
    if clashes:
        raise InputError(
            "slides with the same file name (slide id) would overwrite each other's bags: "
            + "; ".join(clashes[:10])
        )


def shard(specs: Sequence[SlideSpec], index: int = 0, count: int = 1) -> list[SlideSpec]:
    """Every ``count``-th slide starting at ``index`` (0-based) of the sorted list."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard.index must lie in [0, shard.count), got index={index} count={count}")
    return list(specs[index::count])
