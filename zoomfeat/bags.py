"""The bag format: per-slide HDF5 feature bags in TRIDENT's layout.

Layout under an output directory (``mag`` is 20 for the 20x-based sets, 5 for the 5x sets)::

    {out}/{mag}x_{tile_px}px_0px_overlap/features_{set}/{slide_id}.h5
    {out}/{mag}x_{tile_px}px_0px_overlap/patches/{slide_id}_patches.h5

A feature file holds ``features`` float32 or float16 (N, D; :data:`FEATURE_DTYPES`) chunked by rows, ``coords`` int64 (N, 2)
(top-left [x, y] in level-0 pixels, with TRIDENT's attributes), optionally ``parent_idx``
int64 (N,) (row of each 20x tile's parent in the 5x file) and provenance attributes on the
file. TRIDENT, Patho-Bench and torchmil's ``TridentWSIDataset`` read these files unchanged.

Every write goes to a temporary name in the same directory and is fsync-ed and renamed when
complete (:func:`zoomfeat.runtime.atomic.atomic_path`), so a killed run never leaves a truncated
bag under the final name. See docs/ARCHITECTURE.md, "Bag format".

Every file written here carries ``format_version`` (:data:`FORMAT_VERSION`); a file without it is
version 0 (the layout before the attribute existed). :func:`read_header` reads what a file is
(intact or not, its attributes, its format version) in one open; the extraction reads older
formats through one function on top of it (``zoomfeat.features.outputs.read_output``).

Fused sets as files or derived: a fused bag ``features_{family}_fused/{slide}.h5`` holds
``concat(f20[i], f5[parent_idx[i]])``. When that file is absent (extraction with
``bags.fused=derived``, or the directory deleted) every reader here builds the same rows from the
family's 20x bag, its 5x bag and the 20x bag's ``parent_idx`` (:func:`derived_fused`):
:func:`open_bag`, :func:`open_checked_bag`, :func:`list_bags`, :func:`read_attrs` and
:class:`BagDataset` take the fused path as if the file were there (:func:`fused_parts` names the
two parts). A part that is missing, damaged or from another slide or config is one
:class:`FusedPartsError` line naming the files.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import h5py
import numpy as np

from zoomfeat.runtime.atomic import atomic_path
from zoomfeat.runtime.errors import BagError
from zoomfeat.runtime.units import TILE_PX

#: the bag format written by this version (file attribute ``format_version``; absent: version 0)
FORMAT_VERSION = 1

#: storage dtypes of ``features`` (``bags.dtype``): float16 halves the files (STAMP's choice);
#: readers cast to what they ask for (:func:`open_bag`)
FEATURE_DTYPES = ("float16", "float32")
#: the largest finite float16 (2^15 (2 - 2^-10)); larger magnitudes would be stored as inf
FLOAT16_MAX = 65504.0


class FeatureRangeError(BagError):
    """Features that the storage dtype cannot hold (a value beyond float16's range): nothing is written."""


def storage_rows(rows: np.ndarray, dtype: str, *, where: str) -> np.ndarray:
    """``rows`` as stored with ``dtype`` (one of :data:`FEATURE_DTYPES`), refused when float16 cannot hold them.

    float16 rounds each value to the nearest of its 11 significant bits: a relative error of at
    most ``2^-11`` (about 4.9e-4) for ``|x| >= 2^-14``, an absolute one of at most ``2^-25`` below
    (subnormals). A value with ``|x| > FLOAT16_MAX`` would become inf: :class:`FeatureRangeError`
    naming ``where`` (the slide and the set), never an inf in a bag.
    """
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"bag dtype must be one of {', '.join(FEATURE_DTYPES)}, got {dtype!r}")
    if dtype == "float32":
        return np.asarray(rows, dtype=np.float32)
    rows = np.asarray(rows)
    big = np.abs(rows) > FLOAT16_MAX
    if big.any():
        worst = float(np.abs(rows[big]).max())
        raise FeatureRangeError(
            f"{where}: {int(big.sum())} feature value(s) beyond float16's range (|x| up to {worst:.4g} > "
            f"{FLOAT16_MAX:g}); store them as float32: rerun with bags.dtype=float32"
        )
    return rows.astype(np.float16)


T = TypeVar("T")


@dataclass(frozen=True)
class PerMag(Generic[T]):
    """One value per bag magnification: ``x20`` for the 20x tiles, ``x5`` for their 5x parents.

    Named fields instead of parallel ``*20`` / ``*5`` arguments, so the two cannot be swapped;
    ``per_mag[20]`` and ``per_mag[5]`` index it by magnification.
    """

    x20: T
    x5: T

    def __getitem__(self, mag: int) -> T:
        if mag == 20:
            return self.x20
        if mag == 5:
            return self.x5
        raise KeyError(f"no bag magnification {mag!r}; bags are written at 20 and 5")

    def items(self) -> tuple[tuple[int, T], tuple[int, T]]:
        """``((20, x20), (5, x5))``."""
        return ((20, self.x20), (5, self.x5))


#: magnification of the bag directory each feature set is written to
FEATURE_SET_MAG: dict[str, int] = {
    "zoomldm_20x": 20,
    "zoomldm_5x": 5,
    "zoomldm_fused": 20,
    "uni_20x": 20,
    "uni_5x": 5,
    "uni_fused": 20,
}
FEATURE_SETS = tuple(FEATURE_SET_MAG)
#: the magnification of any feature set from its name's suffix (a family ``{name}`` writes
#: ``{name}_20x``, ``{name}_5x`` and ``{name}_fused``; fused rows are 20x rows)
SET_SUFFIX_MAG: dict[str, int] = {"_20x": 20, "_5x": 5, "_fused": 20}


def set_magnification(feature_set: str) -> int | None:
    """The bag directory magnification of ``feature_set``: :data:`FEATURE_SET_MAG` for the six
    classic names, else from its suffix (``phikon_5x`` -> 5, ``zoomldm-t50-out2_fused`` -> 20);
    ``None`` when the name has no known suffix."""
    if feature_set in FEATURE_SET_MAG:
        return FEATURE_SET_MAG[feature_set]
    for suffix, mag in SET_SUFFIX_MAG.items():
        if feature_set.endswith(suffix) and len(feature_set) > len(suffix):
            return mag
    return None


#: attributes every ``coords`` dataset carries (TRIDENT's names)
COORDS_ATTRS = (
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "name",
    "level0_width",
    "level0_height",
)


def mag_dir(out_dir: str | Path, mag: int | float, tile_px: int = TILE_PX, overlap: int = 0) -> Path:
    """``{out}/{mag}x_{tile_px}px_{overlap}px_overlap`` (TRIDENT's directory name)."""
    mag_str = f"{int(mag)}" if float(mag).is_integer() else f"{mag:g}"
    return Path(out_dir) / f"{mag_str}x_{tile_px}px_{overlap}px_overlap"


def bag_path(
    out_dir: str | Path, feature_set: str, slide_id: str, tile_px: int = TILE_PX, *, mag: int | None = None
) -> Path:
    """Path of one slide's bag for ``feature_set`` (mag from its name: :func:`set_magnification`)."""
    if mag is None:
        mag = set_magnification(feature_set)
        if mag is None:
            raise ValueError(
                f"unknown feature set {feature_set!r}; pass mag= or use a name ending in _20x, _5x or _fused "
                f"(e.g. {', '.join(FEATURE_SETS)})"
            )
    return mag_dir(out_dir, mag, tile_px) / f"features_{feature_set}" / f"{slide_id}.h5"


def patches_path(out_dir: str | Path, slide_id: str, mag: int, tile_px: int = TILE_PX) -> Path:
    """Path of TRIDENT's coords file for one slide at one magnification."""
    return mag_dir(out_dir, mag, tile_px) / "patches" / f"{slide_id}_patches.h5"


def _attr_value(value: Any) -> Any:
    """h5py stores str, numbers and arrays; everything else goes in as JSON."""
    if value is None:
        return "null"
    if isinstance(value, (str, bytes, int, float, bool, np.integer, np.floating, np.bool_, np.ndarray)):
        return value
    if isinstance(value, Path):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _write_coords(f: h5py.File, coords: np.ndarray, coords_attrs: Mapping[str, Any]) -> None:
    missing = [k for k in COORDS_ATTRS if k not in coords_attrs]
    if missing:
        raise ValueError(f"coords attributes missing: {missing}")
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    ds = f.create_dataset("coords", data=coords, maxshape=(None, 2))
    for key, value in coords_attrs.items():
        ds.attrs[key] = _attr_value(value)


def write_bag(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    coords_attrs: Mapping[str, Any],
    *,
    attrs: Mapping[str, Any] | None = None,
    parent_idx: np.ndarray | None = None,
    chunk_rows: int = 1024,
    dtype: str = "float32",
) -> Path:
    """Write one bag atomically (temporary file, then rename) and return its path.

    ``features`` (N, D) is stored as ``dtype`` (:data:`FEATURE_DTYPES`; float16 beyond its range
    raises :class:`FeatureRangeError`) chunked by rows; an empty bag is (0, D). The file
    carries ``format_version`` (:data:`FORMAT_VERSION`) besides ``attrs``.
    """
    path = Path(path)
    features = storage_rows(np.asarray(features, dtype=np.float32), dtype, where=str(path))
    if features.ndim != 2:
        raise ValueError(f"{path}: features must be 2-D (N, D), got shape {features.shape}")
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if len(coords) != len(features):
        raise ValueError(f"{path}: {len(features)} feature rows but {len(coords)} coords")
    if parent_idx is not None and len(parent_idx) != len(features):
        raise ValueError(f"{path}: {len(features)} feature rows but {len(parent_idx)} parent_idx entries")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        n, d = features.shape
        chunks = (max(1, min(chunk_rows, n)), d) if n and d else None
        f.create_dataset("features", data=features, chunks=chunks, maxshape=(None, d))
        _write_coords(f, coords, coords_attrs)
        if parent_idx is not None:
            f.create_dataset("parent_idx", data=np.asarray(parent_idx, dtype=np.int64))
        write_file_attrs(f, attrs or {})
        f.attrs["complete"] = True
    return path


def write_file_attrs(f: h5py.File, attrs: Mapping[str, Any]) -> None:
    """The file attributes of a bag or coords file: ``attrs`` and ``format_version``."""
    file_attrs = f.attrs  # one manager: each `f.attrs` opens the root group again (~0.1 ms)
    for key, value in attrs.items():
        file_attrs[key] = _attr_value(value)
    file_attrs["format_version"] = FORMAT_VERSION


def fill_patches(
    f: h5py.File, coords: np.ndarray, coords_attrs: Mapping[str, Any], attrs: Mapping[str, Any]
) -> None:
    """Fill an open, empty HDF5 file as TRIDENT's coords file (``coords``, attributes, completeness mark)."""
    _write_coords(f, coords, coords_attrs)
    write_file_attrs(f, attrs)
    f.attrs["complete"] = True


def write_patches(
    path: str | Path,
    coords: np.ndarray,
    coords_attrs: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write TRIDENT's ``{slide_id}_patches.h5`` coords file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        fill_patches(f, coords, coords_attrs, attrs or {})
    return path


@dataclass
class Bag:
    """One slide's bag as read back: features (N, D), coords (N, 2) and attributes."""

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    coords_attrs: dict[str, Any] = field(default_factory=dict)
    parent_idx: np.ndarray | None = None

    def __iter__(self):  # allows ``features, coords, attrs = open_bag(path)``
        return iter((self.features, self.coords, self.attrs))

    def __len__(self) -> int:
        return len(self.features)


# ------------------------------------------------------------------ fused sets: file or derived
#: the suffix of fused sets; their rows are ``concat(20x row i, 5x row parent_idx[i])``
FUSED_SUFFIX = "_fused"
#: the ``description`` attribute of fused bags (as extraction writes it)
FUSED_DESCRIPTION = "concat(20x tile feature, its 5x parent's feature)"
#: what to do when a fused bag cannot be derived (the end of :class:`FusedPartsError` lines)
FUSED_FIX = "re-extract the slide (with bags.fused=file to write the fused file itself)"
_TRIDENT_DIR = re.compile(r"^(?P<mag>\d+(?:\.\d+)?)x_(?P<px>\d+)px_(?P<overlap>\d+)px_overlap$")


class FusedPartsError(BagError):
    """A fused bag with no file whose 20x and 5x parts are missing, damaged or do not belong together."""


def fused_part_dirs(bag_dir: str | Path) -> PerMag[Path] | None:
    """The ``features_{family}_20x`` and ``features_{family}_5x`` directories a fused set
    directory ``{root}/20x_{px}px_{o}px_overlap/features_{family}_fused`` is built from (the 5x
    one is ``{root}/5x_{px}px_{o}px_overlap/features_{family}_5x``); ``None`` for any other
    directory (not a fused set, or not in a 20x TRIDENT directory)."""
    bag_dir = Path(bag_dir)
    name = bag_dir.name
    if not (name.startswith("features_") and name.endswith(FUSED_SUFFIX)):
        return None
    family = name[len("features_") : -len(FUSED_SUFFIX)]
    m = _TRIDENT_DIR.match(bag_dir.parent.name)
    if not family or m is None or float(m["mag"]) != 20:
        return None
    x5 = bag_dir.parent.parent / f"5x_{m['px']}px_{m['overlap']}px_overlap" / f"features_{family}_5x"
    return PerMag(x20=bag_dir.parent / f"features_{family}_20x", x5=x5)


def fused_parts(path: str | Path) -> PerMag[Path] | None:
    """The 20x and 5x bag files a fused bag file is built from (:func:`fused_part_dirs`, same
    file name); ``None`` when ``path`` is not in a fused set directory."""
    path = Path(path)
    dirs = fused_part_dirs(path.parent)
    return None if dirs is None else PerMag(x20=dirs.x20 / path.name, x5=dirs.x5 / path.name)


def is_derived(path: str | Path) -> bool:
    """Whether ``path`` (a bag file or a set directory) is a fused set's that has no file or
    directory but whose 20x part does: its readers derive the rows."""
    path = Path(path)
    if path.exists():
        return False
    parts = fused_parts(path) if path.suffix == ".h5" else fused_part_dirs(path)
    return parts is not None and parts.x20.exists()


def _carries_parent_idx(dir20: Path) -> bool:
    """Whether the first bag of a 20x set directory has ``parent_idx`` (zoomfeat's extraction
    writes it; TRIDENT's own bags and other tools' lack it, so no fused set derives from them)."""
    for p in sorted(dir20.glob("*.h5")):
        if p.name.startswith("."):
            continue
        try:
            with h5py.File(p, "r") as f:
                return "parent_idx" in f
        except OSError:
            return True  # unreadable: reading the bag says so in one line
    return True  # no bags yet: an empty set


def is_derived_set_dir(bag_dir: str | Path) -> bool:
    """Whether ``bag_dir`` is a fused set directory that does not exist but can be derived: its
    ``_20x`` and ``_5x`` set directories exist (:func:`fused_part_dirs`) and the 20x bags carry
    ``parent_idx`` (the first one is looked at)."""
    bag_dir = Path(bag_dir)
    dirs = fused_part_dirs(bag_dir)
    if bag_dir.is_dir() or dirs is None or not (dirs.x20.is_dir() and dirs.x5.is_dir()):
        return False
    return _carries_parent_idx(dirs.x20)


def is_bag_dir(bag_dir: str | Path) -> bool:
    """A ``features_{set}`` directory that exists, or a fused one that can be derived."""
    return Path(bag_dir).is_dir() or is_derived_set_dir(bag_dir)


def bag_exists(path: str | Path) -> bool:
    """A bag file that exists, or a fused bag whose 20x and 5x parts do (:func:`fused_parts`)."""
    path = Path(path)
    if path.is_file():
        return True
    parts = fused_parts(path)
    return parts is not None and parts.x20.is_file() and parts.x5.is_file()


def _features_meta(path: Path) -> tuple[int, int, np.dtype]:
    """(rows, width, stored dtype) of a bag file's ``features``, data unread."""
    with h5py.File(path, "r") as f:
        ds = f["features"]
        n, d = (tuple(int(x) for x in ds.shape) + (0, 0))[:2]
        return n, d, np.dtype(ds.dtype)


def stored_dtype(path: str | Path) -> np.dtype:
    """The dtype ``features`` is stored as: the file's, or for a derived fused bag the one its
    two parts promote to (both float16: float16)."""
    path = Path(path)
    parts = None if path.is_file() else fused_parts(path)
    if parts is None:
        return _features_meta(path)[2]
    return np.result_type(_features_meta(parts.x20)[2], _features_meta(parts.x5)[2])


def bag_nbytes(path: str | Path) -> int:
    """Bytes of a bag file; for a derived fused bag, the 20x part's plus the 5x rows it repeats
    (``N20 * D5 * itemsize``: about what the fused file would take)."""
    path = Path(path)
    parts = None if path.is_file() else fused_parts(path)
    if parts is None:
        return path.stat().st_size
    try:
        n20, _, _ = _features_meta(parts.x20)
        _, d5, dt5 = _features_meta(parts.x5)
        return parts.x20.stat().st_size + n20 * d5 * dt5.itemsize
    except (OSError, KeyError):
        return 0  # a part missing or damaged: reading the bag says so in one line


def _fused_attrs(
    attrs20: Mapping[str, Any], *, name: str, split: tuple[int, int], parts: PerMag[Path]
) -> dict[str, Any]:
    """A derived fused bag's attributes: the 20x bag's (the family's config hash, recipe, slide),
    with the fused set's name, description and ``split`` (as the fused file carries them), and
    ``derived_from`` (the two parts)."""
    return {
        **attrs20,
        "feature_set": name,
        "description": FUSED_DESCRIPTION,
        "split": json.dumps([int(split[0]), int(split[1])]),
        "derived_from": json.dumps([str(parts.x20), str(parts.x5)]),
    }


def _fused_set_name(path: Path) -> str:
    return path.parent.name[len("features_") :]


def _check_fused_parts(bags: PerMag[Bag], paths: PerMag[Path], fused: str) -> np.ndarray:
    """``parent_idx`` of the 20x part once everything :func:`derived_fused` checks holds."""
    head = f"fused bag {fused} cannot be derived from {paths.x20} and {paths.x5}"
    for mag, bag in bags.items():
        problem = bag_problem(bag)
        if problem:
            raise FusedPartsError(f"{head}: the {mag}x part {problem}; {FUSED_FIX}")
    a20, a5 = bags.x20.attrs, bags.x5.attrs
    for key, what in (("slide_id", "slides"), ("slide_quickhash", "slides"), ("config_hash", "configs")):
        if key in a20 and key in a5 and a20[key] != a5[key]:
            raise FusedPartsError(
                f"{head}: the parts come from different {what} ({key} {a20[key]!r} vs {a5[key]!r}); {FUSED_FIX}"
            )
    parent_idx = bags.x20.parent_idx
    if parent_idx is None:
        raise FusedPartsError(
            f"{head}: the 20x part has no parent_idx (not zoomfeat's extraction); {FUSED_FIX}"
        )
    parent_idx = np.asarray(parent_idx, np.int64).reshape(-1)
    n5 = len(bags.x5)
    if len(parent_idx) != len(bags.x20) or len(bags.x5.coords) != n5:
        raise FusedPartsError(
            f"{head}: {len(bags.x20)} 20x rows but {len(parent_idx)} parent_idx entries, "
            f"{n5} 5x rows and {len(bags.x5.coords)} 5x coords; {FUSED_FIX}"
        )
    if len(parent_idx) and (parent_idx.min() < 0 or parent_idx.max() >= n5):
        raise FusedPartsError(
            f"{head}: parent_idx spans {int(parent_idx.min())}..{int(parent_idx.max())} but the 5x part has "
            f"{n5} row(s); {FUSED_FIX}"
        )
    extent = bags.x5.coords_attrs.get(
        "patch_size_level0_exact", bags.x5.coords_attrs.get("patch_size_level0")
    )
    if extent is not None and len(parent_idx):
        # every 20x tile lies inside its 5x parent (1 px of slack for rounded fractional lattices)
        offset = np.asarray(bags.x20.coords, np.float64) - np.asarray(bags.x5.coords, np.float64)[parent_idx]
        outside = np.flatnonzero(((offset < -1) | (offset >= float(extent) + 1)).any(axis=1))
        if len(outside):
            i = int(outside[0])
            raise FusedPartsError(
                f"{head}: {len(outside)} 20x tile(s) lie outside the 5x row parent_idx names (row {i}: "
                f"{bags.x20.coords[i].tolist()} vs 5x row {int(parent_idx[i])} at "
                f"{bags.x5.coords[parent_idx[i]].tolist()}); {FUSED_FIX}"
            )
    return parent_idx


def derived_fused(bags: PerMag[Bag], *, paths: PerMag[Path], name: str | None = None) -> Bag:
    """A fused bag built from its family's 20x and 5x bags of one slide.

    Row ``i`` is ``concat(f20[i], f5[parent_idx[i]])`` (width ``D20 + D5``), exactly the row the
    fused file holds: both parts are read in the same dtype and concatenation copies values, so
    the rows equal the fused file's bitwise when the sets were stored with the same
    ``bags.dtype``. Coords and ``parent_idx`` are the 20x bag's, attributes its too with the fused
    set's ``feature_set``, ``description``, ``split`` and ``derived_from``.

    Checked first: both parts finished and finite (:func:`bag_problem`), of the same slide
    (``slide_id``, ``slide_quickhash``) and config (``config_hash``), ``parent_idx`` present, of
    one entry per 20x row and within the 5x rows, and every 20x tile inside its 5x parent tile.

    Args:
        bags: the slide's 20x and 5x bags (features in the dtype wanted).
        paths: their files, named in errors.
        name: the fused set's name (default: from ``paths.x20``'s directory).

    Raises:
        FusedPartsError: one line naming both files, what is wrong and what to do.
    """
    fused_name = name or _fused_set_name(paths.x20).removesuffix("_20x") + FUSED_SUFFIX
    fused_dir = paths.x20.parent.parent / f"features_{fused_name}"
    parent_idx = _check_fused_parts(bags, paths, str(fused_dir / paths.x20.name))
    f20, f5 = bags.x20.features, bags.x5.features
    if f20.ndim != 2 or f5.ndim != 2:
        raise FusedPartsError(
            f"fused bag {fused_dir / paths.x20.name} cannot be derived: features of shape {f20.shape} "
            f"and {f5.shape} are not (N, D); {FUSED_FIX}"
        )
    features = np.empty((len(f20), f20.shape[1] + f5.shape[1]), dtype=np.result_type(f20, f5))
    features[:, : f20.shape[1]] = f20
    features[:, f20.shape[1] :] = f5[parent_idx]  # one gather, written in place (no concat temporary)
    return Bag(
        features=features,
        coords=bags.x20.coords,
        attrs=_fused_attrs(bags.x20.attrs, name=fused_name, split=(f20.shape[1], f5.shape[1]), parts=paths),
        coords_attrs=dict(bags.x20.coords_attrs),
        parent_idx=bags.x20.parent_idx,
    )


def _missing_fused(path: Path, parts: PerMag[Path]) -> FusedPartsError:
    lacking = [f"the {mag}x part {p}" for mag, p in parts.items() if not p.is_file()]
    return FusedPartsError(
        f"fused bag {path} has no file and cannot be derived: {' and '.join(lacking)} "
        f"{'is' if len(lacking) == 1 else 'are'} missing; {FUSED_FIX}"
    )


def open_derived_fused(path: str | Path, dtype: np.dtype | type = np.float32) -> Bag:
    """The fused bag at ``path`` derived from its parts (:func:`fused_parts`, :func:`derived_fused`).

    Raises:
        FusedPartsError: ``path`` is not a fused set's, a part is missing, unreadable, unfinished,
            non-finite or does not match the other.
    """
    path = Path(path)
    parts = fused_parts(path)
    if parts is None:
        raise FusedPartsError(
            f"{path} is not a fused set's bag (features_{{family}}_fused in a 20x directory)"
        )
    if not (parts.x20.is_file() and parts.x5.is_file()):
        raise _missing_fused(path, parts)
    read = {}
    for mag, part in parts.items():
        try:
            read[mag] = _open_file(part, dtype)
        except (OSError, KeyError, ValueError) as err:
            reason = str(err).replace(str(part), "").strip(" :;") or type(err).__name__
            raise FusedPartsError(
                f"fused bag {path} has no file and cannot be derived: its {mag}x part {part} is damaged "
                f"({reason}); {FUSED_FIX}"
            ) from err
    return derived_fused(PerMag(x20=read[20], x5=read[5]), paths=parts, name=_fused_set_name(path))


def open_bag(path: str | Path, dtype: np.dtype | type = np.float32) -> Bag:
    """Read one bag: ``features, coords, attrs = open_bag(path)``.

    A fused set's bag whose file is absent is derived from its family's 20x and 5x bags
    (:func:`open_derived_fused`: the same rows, bitwise, as the file would hold).

    Raises ``FileNotFoundError`` naming the file when it is missing (for a fused bag: when its
    20x and 5x parts are missing too), :class:`FusedPartsError` when one part is missing or the
    parts do not match, :class:`BagError` (a ``ValueError``) when it is not a readable bag (no
    ``features`` dataset).
    """
    path = Path(path)
    if not path.is_file():
        parts = fused_parts(path)
        if parts is not None and (parts.x20.is_file() or parts.x5.is_file()):
            return open_derived_fused(path, dtype)
        also = f" (nor the 20x and 5x bags {parts.x20} and {parts.x5} to derive it from)" if parts else ""
        raise FileNotFoundError(f"no bag file at {path}{also}")
    return _open_file(path, dtype)


def _open_file(path: Path, dtype: np.dtype | type) -> Bag:
    """:func:`open_bag` of a file that exists."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise BagError(
            f"{path}: not a readable HDF5 bag ({err}); re-extract the slide or remove the file"
        ) from err
    with f:
        if "features" not in f:
            raise BagError(f"{path}: not a feature bag (no 'features' dataset; has {sorted(f.keys())})")
        features = f["features"][()].astype(dtype, copy=False)
        coords = f["coords"][()] if "coords" in f else np.zeros((len(features), 2), np.int64)
        coords_attrs = {k: _decode_attr(v) for k, v in f["coords"].attrs.items()} if "coords" in f else {}
        parent_idx = f["parent_idx"][()] if "parent_idx" in f else None
        attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
    return Bag(
        features=features, coords=coords, attrs=attrs, coords_attrs=coords_attrs, parent_idx=parent_idx
    )


def read_attrs(path: str | Path) -> dict[str, Any]:
    """File-level attributes of a bag without reading its features (a derived fused bag: its 20x
    part's, with the fused set's ``feature_set``, ``description``, ``split`` and ``derived_from``)."""
    path = Path(path)
    parts = None if path.is_file() else fused_parts(path)
    if parts is not None and parts.x20.is_file() and parts.x5.is_file():
        attrs20 = read_attrs(parts.x20)
        split = (_features_meta(parts.x20)[1], _features_meta(parts.x5)[1])
        return _fused_attrs(attrs20, name=_fused_set_name(path), split=split, parts=parts)
    with h5py.File(path, "r") as f:
        return {k: _decode_attr(v) for k, v in f.attrs.items()}


@dataclass
class FileHeader:
    """What one open of a finished bag or coords file tells (:func:`read_header`).

    Attributes:
        problem: what is wrong with it (``""``: intact); attrs: its file attributes (those of an
            intact file; ``{}`` otherwise); format_version: :func:`format_version` of ``attrs``.
    """

    problem: str
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def format_version(self) -> int:
        return format_version(self.attrs)


def format_version(attrs: Mapping[str, Any]) -> int:
    """The ``format_version`` of a file's attributes; 0 for files written before it existed."""
    try:
        return int(attrs.get("format_version", 0))
    except (TypeError, ValueError):
        return -1  # not ours: no version reads it


def read_header(path: str | Path, datasets: tuple[str, ...] = ("coords",)) -> FileHeader:
    """Check a finished bag or coords file and read its attributes, in one open.

    Intact: it opens as HDF5, carries ``complete = True`` (set last, just before the atomic
    rename) and its ``datasets`` exist and read to their last row (a file truncated by a failed
    copy fails one of these). A missing file gives the problem ``"missing"``.
    """
    path = Path(path)
    if not path.is_file():
        return FileHeader("missing")
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                return FileHeader("no completeness mark (an unfinished or foreign file)")
            for name in datasets:
                if name not in f:
                    return FileHeader(f"no {name!r} dataset")
                ds = f[name]
                if ds.shape and ds.shape[0]:
                    ds[ds.shape[0] - 1]  # the last row: a truncated file fails here
            attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        return FileHeader(f"cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
    return FileHeader("", attrs)


def file_problem(path: str | Path, datasets: tuple[str, ...] = ("coords",)) -> str:
    """What is wrong with a finished bag or coords file at ``path``; ``""`` when it is intact
    (:func:`read_header`'s ``problem``; ``"missing"`` for a missing file)."""
    return read_header(path, datasets).problem


def bag_is_complete(path: str | Path, config_hash: str | None = None) -> bool:
    """True when ``path`` is a finished bag, and (if given) was written with ``config_hash``.

    Finished bags only ever appear under their final name (atomic rename), but a file from
    another tool or an older format is checked for the ``complete`` flag too.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        attrs = read_attrs(path)
    except OSError:
        return False
    if not attrs.get("complete", False):
        return False
    return config_hash is None or attrs.get("config_hash") == config_hash


def _bag_files(bag_dir: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(bag_dir.glob("*.h5")) if not p.name.startswith(".")}


def list_bags(bag_dir: str | Path) -> dict[str, Path]:
    """``{slide_id: path}`` for every ``*.h5`` bag in a ``features_{set}`` directory.

    A fused set's directory also lists the slides whose fused file is absent but whose 20x bag
    exists (their paths do not exist: :func:`open_bag` derives them), and may itself be absent
    when its ``_20x`` and ``_5x`` directories exist and the 20x bags carry ``parent_idx``
    (:func:`is_derived_set_dir`).
    """
    bag_dir = Path(bag_dir)
    found = _bag_files(bag_dir) if bag_dir.is_dir() else None
    dirs = fused_part_dirs(bag_dir)
    if dirs is not None and dirs.x20.is_dir() and dirs.x5.is_dir() and _carries_parent_idx(dirs.x20):
        derivable = {slide: bag_dir / p.name for slide, p in _bag_files(dirs.x20).items()}
        found = dict(sorted({**derivable, **(found or {})}.items(), key=lambda item: item[1].name))
    if found is None:
        raise FileNotFoundError(f"no bag directory at {bag_dir}")
    return found


def _preview(items: list[Any], n: int = 20) -> str:
    return ", ".join(map(str, items[:n])) + (f", ... ({len(items)} in all)" if len(items) > n else "")


#: what to do about a damaged, unfinished or non-finite bag (the end of :func:`open_checked_bag`'s errors)
BAG_FIX = "delete it and re-extract the slide (or leave the slide out)"


def bag_problem(bag: Bag) -> str:
    """What makes a readable bag unusable, ``""`` when nothing does.

    Unfinished: zoomfeat wrote it (it carries ``config_hash`` or ``zoomfeat_version``) but it
    lacks ``complete = True`` (other tools' bags carry no such mark). Non-finite: any NaN or inf
    feature value (an fp16 overflow, an interrupted writer).
    """
    zoomfeat_made = any(k in bag.attrs for k in ("config_hash", "zoomfeat_version"))
    if zoomfeat_made and not bag.attrs.get("complete", False):
        return "is unfinished (written by zoomfeat but not marked complete)"
    finite = np.isfinite(bag.features)
    if not finite.all():
        rows = int((~finite).any(axis=1).sum()) if finite.ndim == 2 else int((~finite).sum())
        return (
            f"holds {int((~finite).sum())} non-finite feature value(s) (NaN/inf) in {rows} of {len(bag)} "
            "tile(s) (fp16 overflows to inf: extract with precision=fp32 or bf16)"
        )
    return ""


def open_checked_bag(path: str | Path, dtype: np.dtype | type = np.float32, *, context: str = "") -> Bag:
    """:func:`open_bag`, refusing a damaged, unfinished or non-finite bag with one line.

    The same check for every reader of bags: the benchmark, :class:`BagDataset` and the exports.
    A fused bag without a file is derived from its parts, which are checked instead
    (:func:`derived_fused`; :class:`FusedPartsError`); a fused file whose 20x bag has another
    ``config_hash`` (stale) is a :class:`FusedPartsError` too.

    Args:
        path: the bag file.
        dtype: the features' dtype once read.
        context: the start of the error message (e.g. ``"feature set 'uni_20x': "``).

    Returns:
        The bag.

    Raises:
        BagError: ``{context}damaged bag {path} (why); ...`` (unreadable, truncated, no features),
            ``{context}bag {path} is unfinished ...`` or ``{context}bag {path} holds N non-finite ...``.
    """
    path = Path(path)
    try:
        bag = open_bag(path, dtype)
    except FusedPartsError as err:  # a derived fused bag: its own line names the parts
        raise FusedPartsError(f"{context}{err}") from err
    except (OSError, KeyError, ValueError) as err:  # BagError is a ValueError
        reason = str(err).replace(str(path), "").strip(" :;") or type(err).__name__
        raise BagError(f"{context}damaged bag {path} ({reason}); {BAG_FIX}") from err
    if not path.is_file():
        return bag  # derived: its two parts were checked (derived_fused)
    problem = bag_problem(bag)
    if problem:
        raise BagError(f"{context}bag {path} {problem}; {BAG_FIX}")
    stale = _stale_fused(path, bag)
    if stale:
        raise FusedPartsError(f"{context}{stale}")
    return bag


def _stale_fused(path: Path, bag: Bag) -> str:
    """The error line for a fused file that disagrees with its family's 20x bag (another
    ``config_hash``: a file left by an earlier run after the family was re-extracted with
    ``bags.fused=derived``); ``""`` when they agree or either lacks a hash (other tools' bags)."""
    parts = fused_parts(path)
    mine = bag.attrs.get("config_hash")
    if parts is None or mine is None or not parts.x20.is_file():
        return ""
    try:
        theirs = read_attrs(parts.x20).get("config_hash")
    except OSError:
        return ""  # an unreadable 20x bag is that set's problem, said when it is read
    if theirs is None or theirs == mine:
        return ""
    return (
        f"fused bag {path} was written with config_hash {mine!r} but its 20x bag {parts.x20} with {theirs!r} "
        f"(a fused file left by an earlier run): delete it, so that readers derive the rows, or {FUSED_FIX}"
    )


def read_labels_table(
    labels: Any,
    *,
    columns: list[str],
    id_columns: list[str] = [],  # noqa: B006 - never mutated
    key: str = "labels",
    columns_fix: str = "name the columns to use",
) -> tuple[Any, str]:
    """A labels table (CSV; TSV for ``.tsv``/``.txt``; or a DataFrame) with ``columns`` checked
    and the ``id_columns`` as strings without surrounding spaces.

    The one reader of labels files: the benchmark (:mod:`zoomfeat.mil.labels`),
    :class:`BagDataset` and anything else that pairs slides with labels.

    Args:
        labels: a path or a ``pandas.DataFrame``.
        columns: the columns it must have.
        id_columns: slide/patient id columns (read as text, stripped).
        key: the setting that named the file (``task.labels``), for messages.
        columns_fix: what a table without ``columns`` is told to do.

    Returns:
        ``(table, source)``: the DataFrame and how messages name it (the path, or ``labels table``).
    """
    import pandas as pd

    if isinstance(labels, pd.DataFrame):
        table, source = labels.copy(), "labels table"
    else:
        path = Path(str(labels)).expanduser()
        source = str(path)
        if not path.is_file():
            from zoomfeat.runtime.errors import InputNotFoundError

            raise InputNotFoundError(f"no labels file at {path} ({key}=): check the path")
        sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
        try:
            table = pd.read_csv(path, sep=sep, dtype={c: str for c in id_columns})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            from zoomfeat.runtime.errors import InputError

            raise InputError(f"{path}: not a readable labels CSV ({err}) ({key}=)") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        from zoomfeat.runtime.errors import InputError

        raise InputError(f"{source}: no column(s) {missing} (columns: {list(table.columns)}); {columns_fix}")
    for c in id_columns:
        table[c] = table[c].map(lambda v: v if pd.isna(v) else str(v).strip())
    return table, source


def labelled_rows(table: Any, *, slide_col: str, label_col: str, source: str, warn: Any = None) -> Any:
    """The rows of a labels table that have a label value; the others are left out with a warning
    naming their slides (``warn(message)``, default ``warnings.warn``)."""
    no_label = table[label_col].isna()
    if no_label.any():
        message = (
            f"{source}: {int(no_label.sum())} row(s) have no {label_col!r} value and are left out: "
            f"{_preview(table.loc[no_label, slide_col].tolist())}"
        )
        if warn is not None:
            warn(message)
        else:
            warnings.warn(message, UserWarning, stacklevel=3)
    return table[~no_label]


def one_label_per_slide(table: Any, *, slide_col: str, label_col: str, source: str) -> Any:
    """One row per slide: a slide listed with two different labels is refused, repeated rows of
    one slide collapse to the first (file order kept).

    Raises:
        InputError: ``{source}: slide(s) listed with different labels: ...``.
    """
    from zoomfeat.runtime.errors import InputError

    counts = table.groupby(slide_col)[label_col].nunique()
    conflicts = counts[counts > 1].index.tolist()
    if conflicts:
        raise InputError(
            f"{source}: slide(s) listed with different labels: {_preview(conflicts)}; keep one row per slide"
        )
    return table.drop_duplicates(slide_col).reset_index(drop=True)


class BagDataset:
    """A torch ``Dataset`` over a bag directory and a labels CSV.

    Each item is a dict ``{"X": FloatTensor (N, D), "Y": label, "coords": LongTensor (N, 2),
    "slide_id": str}``, the shape torchmil's models take (batch size 1, or pad yourself).

    Args:
        bag_dir: a ``features_{set}`` directory of ``{slide_id}.h5`` files; for a fused set it
            may lack files or be absent: those bags are derived from the family's 20x and 5x
            bags (:func:`list_bags`, :func:`open_bag`).
        labels: path of a CSV (or a DataFrame) with a slide column and a label column; ``None``
            gives every bag with label -1.
        slide_col, label_col: column names in the labels table.
        preload: read every bag into memory once (as ``dtype``) instead of on each access.
        dtype: numpy dtype bags are held in (float16 halves memory; X is returned as float32).
    """

    def __init__(
        self,
        bag_dir: str | Path,
        labels: Any = None,
        *,
        slide_col: str = "slide_id",
        label_col: str = "label",
        preload: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        bags = list_bags(bag_dir)
        if labels is None:
            self.slide_ids = list(bags)
            self.labels = [-1] * len(self.slide_ids)
        else:
            # the benchmark's checks (zoomfeat.mil.labels): ids stripped, rows without a label
            # left out, a slide with two labels refused, repeated rows collapsed
            table, source = read_labels_table(
                labels,
                columns=[slide_col, label_col],
                id_columns=[slide_col],
                columns_fix="pass slide_col= / label_col=",
            )
            table = labelled_rows(table, slide_col=slide_col, label_col=label_col, source=source)
            table = one_label_per_slide(table, slide_col=slide_col, label_col=label_col, source=source)
            missing = [s for s in table[slide_col] if s not in bags]
            if missing:
                from zoomfeat.runtime.errors import InputNotFoundError

                raise InputNotFoundError(
                    f"{source}: {len(missing)} labelled slide(s) have no bag in {bag_dir}: {_preview(missing)}; "
                    "extract them or leave them out of the labels"
                )
            unlabelled = sorted(set(bags) - set(table[slide_col]))
            if unlabelled:
                warnings.warn(
                    f"{len(unlabelled)} bag(s) in {bag_dir} have no label and are ignored: {unlabelled[:10]}",
                    stacklevel=2,
                )
            self.slide_ids = list(table[slide_col])
            self.labels = list(table[label_col])
        self.paths = [bags[s] for s in self.slide_ids]
        self.dtype = dtype
        self._cache = [open_checked_bag(p, dtype) for p in self.paths] if preload else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        bag = self._cache[i] if self._cache is not None else open_checked_bag(self.paths[i], self.dtype)
        return {
            "X": torch.from_numpy(np.asarray(bag.features, dtype=np.float32)),
            "Y": torch.as_tensor(self.labels[i]),
            "coords": torch.from_numpy(bag.coords),
            "slide_id": self.slide_ids[i],
        }
