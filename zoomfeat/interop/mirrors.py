"""Mirrors of TRIDENT-layout bags in the formats CLAM, STAMP and slideflow read.

Each writer reads bags (zoomfeat's, or any TRIDENT job directory's) and writes, per feature set,
a folder the other tool takes as it is. Where the format allows, the mirror links to the bag
instead of copying it:

- **CLAM** (``Generic_MIL_Dataset``, ``data_dir`` = ``{dest}/{set}``): ``pt_files/{slide}.pt``, a
  float32 tensor (N, D) written with ``torch.save`` (CLAM's training reads only these), and
  ``h5_files/{slide}.h5``, a relative symlink to the bag (CLAM's ``load_from_h5`` path reads its
  ``features`` and ``coords``).
- **STAMP** (``feature_dir`` = ``{dest}/{set}``): ``{slide}.h5`` with ``feats`` an HDF5 external
  link to the bag's ``/features`` (no copy), ``coords`` in micrometres (level-0 px x mpp), file
  attributes ``unit=um``, ``tile_size_um``, ``tile_size_px``, ``feat_type=tile``, ``encoder``; and
  ``slide_table.csv`` (``PATIENT``, ``FILENAME``) with the slide id as patient (put your patient
  ids in that column).
- **slideflow** (``bags`` = ``{dest}/{set}``): ``{slide}.pt`` as for CLAM, ``{slide}.index.npz``
  (``arr_0``: tile centres in level-0 px, slideflow's tile locations) and ``bags_config.json``
  (``tile_px``, ``tile_um``, ``num_features``). Empty bags are skipped, as slideflow's own
  ``DatasetFeatures.to_torch`` does.

Links are relative, so a directory holding both the bags and the mirror can be moved as a whole.
A fused set without files (extraction with ``bags.fused=derived``) is exported like the others,
its rows derived from the family's 20x and 5x bags (:func:`zoomfeat.bags.derived_fused`): there is
no bag to link to, so CLAM's ``h5_files/{slide}.h5`` and STAMP's ``feats`` are written as HDF5
files holding the rows (in the parts' storage dtype) instead of links; the report marks the set
``(derived)``.
Every bag is read through :func:`zoomfeat.bags.open_checked_bag`, the benchmark's check: a damaged,
unfinished (zoomfeat's without its ``complete`` mark) or non-finite bag stops the export with one
line naming the file (the mirror files written before it are complete).
Every file is written atomically (:mod:`zoomfeat.runtime.atomic`): a mirror file exists complete or
not at all, and rerunning an export rewrites it from the current bags.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoomfeat.bags import (
    Bag,
    fused_part_dirs,
    is_derived_set_dir,
    list_bags,
    open_checked_bag,
    stored_dtype,
    write_bag,
)
from zoomfeat.runtime.atomic import atomic_path, atomic_write_text, ensure_dir, fsync_dir, tmp_name
from zoomfeat.runtime.errors import BagError, ConfigError, InputError, InputNotFoundError
from zoomfeat.runtime.units import MPP_20X

#: TRIDENT's bag directory names: ``{mag}x_{patch_px}px_{overlap}px_overlap``
MAG_DIR_RE = re.compile(r"^(?P<mag>\d+(?:\.\d+)?)x_(?P<px>\d+)px_(?P<overlap>\d+)px_overlap$")


@dataclass(frozen=True)
class FeatureSet:
    """One ``features_{name}`` directory of a TRIDENT-layout bag directory (``derived``: a fused
    set whose directory is absent; its bags are derived from its 20x and 5x sets)."""

    name: str
    directory: Path  # .../{mag}x_{px}px_{overlap}px_overlap/features_{name}
    mag: float
    patch_px: int
    derived: bool = False

    @property
    def bags(self) -> dict[str, Path]:
        return list_bags(self.directory)


@dataclass
class ExportResult:
    """What one export wrote: ``{set: [slide ids]}`` under ``dest``, and the slides skipped."""

    target: str
    dest: Path
    written: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    dims: dict[str, int | None] = field(default_factory=dict)  # feature width (None: no bag written)
    derived: list[str] = field(default_factory=list)  # sets whose rows were derived (no fused files)

    def report(self) -> str:
        lines = []
        for name, slides in self.written.items():
            where = self.dest / name
            skipped = self.skipped.get(name) or []
            extra = f" ({len(skipped)} empty bag(s) skipped)" if skipped else ""
            how = " (derived from its 20x and 5x bags)" if name in self.derived else ""
            lines.append(f"{name}{how}: {len(slides)} slide(s) -> {where}{extra}")
            lines.append("  " + usage(self.target, where, self.dims.get(name)))
        return "\n".join(lines)


def usage(target: str, where: Path, dim: int | None) -> str:
    """How the tool is pointed at a mirror folder (one line)."""
    if target == "clam":
        return f"CLAM: data_dir={where} (pt_files/, h5_files/), --embed_dim {dim}"
    if target == "stamp":
        return (
            f"STAMP: feature_dir={where}, slide_table={where / 'slide_table.csv'} "
            "(PATIENT = slide id; replace it with your patient ids)"
        )
    return f"slideflow: bags={where} (e.g. slideflow.mil.train_mil(config, train_dataset, val_dataset, bags='{where}', ...))"


def find_feature_sets(bag_dir: str | Path, patterns: str | Sequence[str] = ()) -> list[FeatureSet]:
    """The feature sets under ``bag_dir`` whose name matches one of ``patterns`` (all if empty).

    ``bag_dir`` is an extraction ``out_dir`` / TRIDENT job directory (holding
    ``{mag}x_{px}px_{overlap}px_overlap/features_*``) or one such ``{mag}x_...`` directory. A fused
    set without a directory whose ``_20x`` and ``_5x`` directories exist is listed too
    (``derived``).
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    root = Path(bag_dir).expanduser()
    if not root.is_dir():
        raise InputNotFoundError(f"bag directory {root} does not exist (give an extraction out_dir)")
    mag_dirs = [root] if MAG_DIR_RE.match(root.name) else sorted(p for p in root.iterdir() if p.is_dir())
    found = []
    for md in mag_dirs:
        m = MAG_DIR_RE.match(md.name)
        if not m:
            continue
        for fd in sorted(md.glob("features_*")):
            if fd.is_dir():
                name = fd.name[len("features_") :]
                found.append(FeatureSet(name, fd, float(m["mag"]), int(m["px"])))
            fused = md / f"{fd.name.removesuffix('_20x')}_fused"
            if fd.name.endswith("_20x") and fused_part_dirs(fused) is not None and is_derived_set_dir(fused):
                name = fused.name[len("features_") :]
                found.append(FeatureSet(name, fused, float(m["mag"]), int(m["px"]), derived=True))
    if not found:
        raise InputError(
            f"{root}: no feature sets found (expected {{mag}}x_{{px}}px_{{overlap}}px_overlap/features_{{set}}/ "
            "folders, as zoomfeat and TRIDENT write them)"
        )
    if patterns:
        chosen = [fs for fs in found if any(fnmatch.fnmatchcase(fs.name, p) for p in patterns)]
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(fs.name, p) for fs in found)]
        if unmatched:
            raise ConfigError(
                f"export: sets={list(patterns)}: {unmatched} match no feature set in {root} "
                f"(found: {', '.join(fs.name for fs in found)})"
            )
        found = chosen
    names = [fs.name for fs in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        where = "; ".join(str(fs.directory) for fs in found if fs.name in dupes)
        raise InputError(
            f"feature set(s) {dupes} exist at several magnifications or tile sizes ({where}); "
            "pass one {mag}x_... directory as the input"
        )
    return found


# ------------------------------------------------------------------------------ helpers
def _symlink(link: Path, target: Path) -> None:
    """``link`` -> ``target`` as a relative symlink, replaced atomically."""
    ensure_dir(link.parent)
    tmp = tmp_name(link)
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def _save_tensor(path: Path, features: np.ndarray) -> None:
    """``torch.save`` of a plain float32 tensor (N, D), atomically (CLAM and slideflow ``torch.load`` it)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), tmp)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_geometry(path: Path) -> tuple[np.ndarray, dict[str, Any], dict[str, Any], tuple[int, int]]:
    """(coords, coords attributes, file attributes, features shape) of a bag, features unread."""
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise BagError(f"{path}: not a feature bag (needs 'features' and 'coords'; has {sorted(f)})")
            coords = f["coords"][()]
            cattrs = {k: _decode(v) for k, v in f["coords"].attrs.items()}
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            shape = tuple(int(n) for n in f["features"].shape)
    except OSError as err:
        raise BagError(f"{path}: not a readable HDF5 bag ({err}); re-extract the slide") from err
    if len(shape) != 2:
        raise BagError(f"{path}: features of shape {shape}, not [tiles, dim]; re-extract the slide")
    return coords, cattrs, attrs, (shape[0], shape[1])


def _tile_extent_level0(path: Path, cattrs: dict[str, Any]) -> float:
    """A tile's side in level-0 px: ``patch_size_level0_exact`` if stored, else ``patch_size_level0``."""
    for key in ("patch_size_level0_exact", "patch_size_level0"):
        if key in cattrs:
            return float(cattrs[key])
    raise BagError(f"{path}: the coords dataset has no patch_size_level0 attribute (TRIDENT writes it)")


# ------------------------------------------------------------------------------ writers
def write_clam(fs: FeatureSet, dest: Path) -> tuple[list[str], list[str], int | None]:
    """``{dest}/pt_files/{slide}.pt`` + ``{dest}/h5_files/{slide}.h5`` (symlink) for every bag of ``fs``."""
    written, dim = [], None
    for slide_id, path in fs.bags.items():
        bag = open_checked_bag(path, context=f"export of {fs.name!r}: ")
        dim = bag.features.shape[1]
        _save_tensor(dest / "pt_files" / f"{slide_id}.pt", bag.features)
        if path.is_file():
            _symlink(dest / "h5_files" / f"{slide_id}.h5", path)
        else:  # derived: no bag to link to, the rows as a bag of their own
            _write_derived(dest / "h5_files" / f"{slide_id}.h5", bag, path)
        written.append(slide_id)
    return written, [], dim


def _write_derived(out: Path, bag: Bag, path: Path) -> None:
    """A derived fused bag as a file (TRIDENT layout, the parts' storage dtype), replacing a link
    an earlier export may have left."""
    if out.is_symlink():
        out.unlink()
    write_bag(out, bag.features, bag.coords, bag.coords_attrs, attrs=bag.attrs, parent_idx=bag.parent_idx,
              dtype=str(stored_dtype(path)))  # fmt: skip


def write_stamp(
    fs: FeatureSet, dest: Path, *, mpp: float | None = None
) -> tuple[list[str], list[str], int | None]:
    """``{dest}/{slide}.h5`` (``feats`` external link, coords in um) + ``{dest}/slide_table.csv``."""
    written, dim = [], None
    for slide_id, path in fs.bags.items():
        # feats links to the bag or holds its derived rows: finished and finite either way
        bag = open_checked_bag(path, context=f"export of {fs.name!r}: ")
        if path.is_file():
            coords, cattrs, attrs, shape = _read_geometry(path)
        else:  # derived: feats holds the rows (stored as its parts are)
            coords, cattrs, attrs = bag.coords, bag.coords_attrs, bag.attrs
            shape = (len(bag.features), int(bag.features.shape[1]))
        dim = shape[1]
        slide_mpp = mpp if mpp is not None else attrs.get("mpp")
        if slide_mpp is None:
            raise BagError(
                f"{path}: the bag does not store the slide's mpp, which STAMP's micrometre coordinates need; "
                "pass mpp=<level-0 um/px>"
            )
        slide_mpp = float(slide_mpp)
        extent = _tile_extent_level0(path, cattrs)
        out = dest / f"{slide_id}.h5"
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
            if path.is_file():
                f["feats"] = h5py.ExternalLink(os.path.relpath(path, out.parent), "/features")
            else:
                f.create_dataset("feats", data=bag.features.astype(stored_dtype(path)))
            f.create_dataset("coords", data=np.asarray(coords, np.float64).reshape(-1, 2) * slide_mpp)
            f.attrs["unit"] = "um"
            f.attrs["tile_size_um"] = extent * slide_mpp
            f.attrs["tile_size_px"] = int(cattrs.get("patch_size", fs.patch_px))
            f.attrs["feat_type"] = "tile"
            f.attrs["encoder"] = str(attrs.get("encoder", fs.name))
            f.attrs["feature_set"] = fs.name
            f.attrs["mpp"] = slide_mpp
            f.attrs["source_bag"] = os.path.relpath(path, out.parent)  # derived: the fused path it stands for
        written.append(slide_id)
    import pandas as pd

    table = pd.DataFrame({"PATIENT": written, "FILENAME": [f"{s}.h5" for s in written]})
    atomic_write_text(dest / "slide_table.csv", table.to_csv(index=False))
    return written, [], dim


def write_slideflow(fs: FeatureSet, dest: Path) -> tuple[list[str], list[str], int | None]:
    """``{dest}/{slide}.pt`` + ``{slide}.index.npz`` (tile centres) + ``bags_config.json``."""
    written, skipped, dim = [], [], None
    encoder = None
    for slide_id, path in fs.bags.items():
        bag = open_checked_bag(path, context=f"export of {fs.name!r}: ")
        dim = bag.features.shape[1]
        encoder = encoder or bag.attrs.get("encoder")
        if not len(bag):
            skipped.append(slide_id)
            continue
        size = int(bag.coords_attrs.get("patch_size_level0", 0))
        centres = np.asarray(bag.coords, np.int64).reshape(-1, 2) + size // 2
        _save_tensor(dest / f"{slide_id}.pt", bag.features)
        with atomic_path(dest / f"{slide_id}.index.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, arr_0=centres)
        written.append(slide_id)
    if dim is not None:
        config = {
            "extractor": {"class": "zoomfeat", "kwargs": {"feature_set": fs.name, "encoder": encoder}},
            "normalizer": None,
            "num_features": int(dim),
            "tile_px": int(fs.patch_px),
            "tile_um": int(round(fs.patch_px * MPP_20X * 20.0 / fs.mag)),
        }
        atomic_write_text(dest / "bags_config.json", json.dumps(config, indent=2) + "\n")
    return written, skipped, dim


def export_bags(
    bag_dir: str | Path,
    to: str,
    *,
    sets: str | Sequence[str] = (),
    dest: str | Path | None = None,
    mpp: float | None = None,
) -> ExportResult:
    """Write ``to``'s mirror of every bag of the chosen feature sets under ``dest``/``{set}``.

    Args:
        bag_dir: extraction ``out_dir`` or TRIDENT job directory (or one ``{mag}x_...`` folder).
        to: ``clam`` | ``stamp`` | ``slideflow``.
        sets: feature set names or globs (``uni_*``); empty: every set found.
        dest: mirror root; default ``{bag_dir}/export/{to}``.
        mpp: level-0 um/px for bags that do not store it (STAMP only).
    """
    writers = {"clam": write_clam, "stamp": write_stamp, "slideflow": write_slideflow}
    if to not in writers:
        raise ConfigError(f"export: to= must be one of {', '.join(writers)}, got {to!r}")
    bag_dir = Path(bag_dir).expanduser()
    feature_sets = find_feature_sets(bag_dir, sets)
    root = Path(dest).expanduser() if dest is not None else bag_dir / "export" / to
    ensure_dir(root, "export directory")
    result = ExportResult(to, root)
    for fs in feature_sets:
        target = ensure_dir(root / fs.name, "export directory")
        if to == "stamp":
            written, skipped, dim = write_stamp(fs, target, mpp=mpp)
        else:
            written, skipped, dim = writers[to](fs, target)
        result.written[fs.name] = written
        result.skipped[fs.name] = skipped
        result.dims[fs.name] = dim
        if fs.derived:
            result.derived.append(fs.name)
    return result
