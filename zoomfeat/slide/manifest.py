"""Which slides to extract: files, DICOM directories, URLs, directories and manifest CSVs, and the
deterministic shard split.

A manifest CSV has a path column (``path``, ``slide_path``, ``slide``, ``wsi``, ``filename`` or
``file``; relative paths are resolved against the CSV's directory; ``s3://``, ``gs://``,
``https://`` URLs are kept as they are), optionally a ``slide_id`` column (the name of the slide's
bags; default: the file's name without its extension) and an ``mpp`` column that overrides the
resolution of that slide.

A directory holding DICOM instances (``.dcm``) is *one* slide (a DICOM series), named after the
directory. Any other directory contributes every file with a slide extension directly inside it
(not recursive; hidden files ignored) and every subdirectory that is a DICOM series. A URL ending
in ``/`` (``s3://bucket/cohort/``) is listed the same way through fsspec.

A slide's id is the name it is listed under: a symlink ``patient42.svs -> scans/CMU-1.svs`` gives
``patient42``, never the target's name. Two names for one file are two slides (with a warning
naming both), never silently merged; two slides with one id are an error.

The list is de-duplicated and sorted by path, then ``shard(index, count)`` keeps every
``count``-th slide starting at ``index``: the same on every machine, whatever order the
inputs were given in.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoomfeat.runtime.errors import ConfigError, InputError
from zoomfeat.slide.backends import IMAGE_EXTENSIONS, is_url, lower_name
from zoomfeat.slide.backends.dicom import is_dicom_dir
from zoomfeat.slide.naming import slide_id_from_location
from zoomfeat.slide.reader import MissingInputError

#: extensions of the files openslide (and, for OME-TIFF, tiffslide) reads
WSI_EXTENSIONS = (
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
#: every file extension a directory is searched for (plain images need ``mpp=``)
SLIDE_EXTENSIONS = WSI_EXTENSIONS + IMAGE_EXTENSIONS
PATH_COLUMNS = ("path", "slide_path", "slide", "wsi", "filename", "file")
#: the manifest column naming a slide's bags
ID_COLUMN = "slide_id"


def kinds_looked_for() -> str:
    """Every kind of slide discovery looks for, in words (for messages and the docs)."""
    return (
        f"files ending {' '.join(WSI_EXTENSIONS)} (whole-slide images; .ome.tif/.ome.tiff pyramids included), "
        f"plain images ending {' '.join(IMAGE_EXTENSIONS)} (with mpp=), "
        "and subdirectories holding one DICOM series (.dcm files); remote slides are given as URLs "
        "(s3://, gs://, https://), a bucket prefix ending in / is listed"
    )


@dataclass(frozen=True)
class SlideSpec:
    """One slide to extract.

    ``path``: a local :class:`~pathlib.Path` (a file, or a DICOM series directory) or a URL string;
    ``mpp`` overrides the file's resolution for this slide only; ``name`` is its slide id when a
    manifest gives one.
    """

    path: Path | str
    mpp: float | None = None
    name: str | None = None

    @property
    def slide_id(self) -> str:
        """The manifest's ``slide_id``, else the listed name without its extension (compound ones,
        ``.ome.tiff``, whole, as TRIDENT does; a DICOM directory's whole name)."""
        if self.name:
            return self.name
        return slide_id_from_location(self.path, is_dir=self.is_dir)

    @property
    def is_dir(self) -> bool:
        return isinstance(self.path, Path) and self.path.is_dir()

    @property
    def location(self) -> str:
        """The path or URL as one string (what :meth:`zoomfeat.slide.Slide.open` takes)."""
        return str(self.path)

    def _key(self) -> tuple[str, str]:
        return str(self.path), self.name or ""

    def __lt__(self, other: SlideSpec) -> bool:
        return self._key() < other._key()


def _local(text: str, base: Path | None = None) -> Path:
    """An absolute local path, ``..`` normalised but symlinks kept (a link's name is the slide's)."""
    p = Path(text).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return Path(os.path.abspath(p))


def _clean(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def read_manifest(csv_path: str | Path) -> list[SlideSpec]:
    """The slides of a manifest CSV (see the module docstring for its columns)."""
    import pandas as pd

    csv_path = Path(csv_path)
    table = pd.read_csv(csv_path, dtype={ID_COLUMN: str})
    col = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if col is None:
        raise InputError(
            f"manifest {csv_path} needs a slide path column (one of {', '.join(PATH_COLUMNS)}); it has {list(table.columns)}"
        )
    specs = []
    for i, row in table.iterrows():
        text = _clean(row[col])
        if text is None:
            raise InputError(f"manifest {csv_path}: row {int(i) + 2} has an empty {col!r}")
        path: Path | str = text if is_url(text) else _local(text, csv_path.parent)
        raw_mpp = _clean(row.get("mpp")) if "mpp" in table.columns else None
        try:
            mpp = None if raw_mpp is None else float(raw_mpp)
        except ValueError:
            raise InputError(
                f"manifest {csv_path}: row {int(i) + 2} has mpp={raw_mpp!r}, not a number"
            ) from None
        name = _clean(row.get(ID_COLUMN)) if ID_COLUMN in table.columns else None
        if name is not None and (name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
            raise InputError(
                f"manifest {csv_path}: row {int(i) + 2} has slide_id {name!r}; a slide id is a file name "
                "(no '/', '\\' or '..'): bags are written as {{out_dir}}/.../{{slide_id}}.h5"
            )
        specs.append(SlideSpec(path, mpp, name))
    return specs


def _list_directory(p: Path) -> list[SlideSpec]:
    if is_dicom_dir(p):
        return [SlideSpec(p)]
    found = []
    for f in sorted(p.iterdir()):
        if f.name.startswith("."):
            continue
        if f.is_file() and f.suffix.lower() in SLIDE_EXTENSIONS:
            found.append(SlideSpec(f))
        elif f.is_dir() and is_dicom_dir(f):
            found.append(SlideSpec(f))
    return found


def _list_url(url: str, storage_options: Mapping[str, Any] | None) -> list[SlideSpec]:
    """The slide files directly under a URL prefix (``s3://bucket/cohort/``), through fsspec."""
    from zoomfeat.slide.identity import remote_fs

    fs, path = remote_fs(url, storage_options)
    try:
        names = fs.ls(path, detail=False)
    except Exception as err:  # fsspec's clients raise many types
        raise InputError(
            f"cannot list {url} ({type(err).__name__}: {err}); check the URL and storage_options"
        ) from err
    scheme = url.split("://", 1)[0]
    out = []
    for name in sorted(str(n) for n in names):
        if lower_name(name).endswith(SLIDE_EXTENSIONS):
            out.append(SlideSpec(name if "://" in name else f"{scheme}://{name}"))
    return out


def discover(
    inputs: Iterable[str | Path], *, storage_options: Mapping[str, Any] | None = None
) -> list[SlideSpec]:
    """Slides named by files, DICOM directories, URLs, directories and ``.csv`` manifests; sorted,
    without duplicates (a manifest's ``mpp`` and ``slide_id`` for a slide also named elsewhere are kept).

    A named file or directory that does not exist is an error (a typo should not silently
    extract nothing); slides listed in a manifest (and URLs) are checked later, per slide.
    """
    specs: dict[tuple[str, str | None], SlideSpec] = {}
    for item in inputs:
        text = str(item)
        if is_url(text):
            found = _list_url(text, storage_options) if text.endswith("/") else [SlideSpec(text)]
        else:
            p = _local(text)
            if p.is_dir():
                found = _list_directory(p)
            elif p.suffix.lower() == ".csv" and p.is_file():
                found = read_manifest(p)
            elif p.exists():
                found = [SlideSpec(p)]
            else:
                raise MissingInputError(
                    f"input {p} does not exist (give slide files, DICOM directories, directories of slides, "
                    "URLs or manifest CSVs)"
                )
        for spec in found:
            key = (str(spec.path), spec.name)
            old = specs.get(key)
            if old is not None and old.mpp is not None and spec.mpp is not None and old.mpp != spec.mpp:
                raise InputError(
                    f"{spec.path} is listed with two different mpp values ({old.mpp} and {spec.mpp})"
                )
            if old is None or old.mpp is None:
                specs[key] = spec
    # a manifest's slide_id names a path also listed without one (e.g. by its directory)
    named = {str(s.path) for s in specs.values() if s.name}
    for (path, name), spec in list(specs.items()):
        if name is None and path in named:
            del specs[(path, name)]
            if spec.mpp is not None:
                for k, other in list(specs.items()):
                    if k[0] == path and other.mpp is None:
                        specs[k] = SlideSpec(other.path, spec.mpp, other.name)
    out = sorted(specs.values())
    check_unique_ids(out)
    warn_same_files(out)
    return out


def warn_same_files(specs: Sequence[SlideSpec]) -> None:
    """Warn when one file is listed under two names (symlinks, or manifest rows): each name is its own
    slide with its own bags, which is rarely what a cohort means."""
    by_file: dict[str, list[str]] = defaultdict(list)
    for s in specs:
        if isinstance(s.path, Path) and s.path.exists():
            by_file[str(s.path.resolve())].append(s.slide_id)
    same = [f"{', '.join(ids)} (all {f})" for f, ids in by_file.items() if len(ids) > 1]
    if same:
        warnings.warn(
            "one file listed under several names, extracted once per name (the bags are identical): "
            + "; ".join(same[:10])
            + ". Remove the extra links or manifest rows if they are not meant as separate slides",
            stacklevel=3,
        )


def check_unique_ids(specs: Sequence[SlideSpec]) -> None:
    """Bags are named by slide id (file name without extension): two slides with one id would collide."""
    seen: dict[str, Path | str] = {}
    clashes = []
    for s in specs:
        if s.slide_id in seen:
            clashes.append(f"{seen[s.slide_id]} and {s.path} (both '{s.slide_id}')")
        seen.setdefault(s.slide_id, s.path)
    if clashes:
        raise InputError(
            "slides with the same file name (slide id) would overwrite each other's bags: "
            + "; ".join(clashes[:10])
            + ". Rename one, or give each its own slide_id in a manifest CSV"
        )


def shard(specs: Sequence[SlideSpec], index: int = 0, count: int = 1) -> list[SlideSpec]:
    """Every ``count``-th slide starting at ``index`` (0-based) of the sorted list."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard.index must lie in [0, shard.count), got index={index} count={count}")
    return list(specs[index::count])
