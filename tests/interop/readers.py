"""How CLAM, STAMP and slideflow read bags, rebuilt step by step from their own reading code.

Each harness does what the named function of the tool does (same paths, same keys, same calls
to ``torch.load`` / ``h5py`` / ``np.load``, same checks), written here rather than imported,
because none of the three is installed (CLAM is not a package; STAMP and slideflow pull in
large dependency trees). Sources read: CLAM 53e2409, STAMP c54ce06, slideflow 7f5a40b.
"""

from __future__ import annotations

import os
from os.path import dirname, exists, join
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch


# ------------------------------------------------------------------------------------------ CLAM
class ClamMILDataset:
    """CLAM ``dataset_modules/dataset_generic.py``: ``Generic_MIL_Dataset.__getitem__``.

    ``data_dir`` is the folder CLAM's ``main.py`` builds as ``os.path.join(args.data_root_dir,
    <task sub-folder>)``. Without ``use_h5`` (always the case in training: ``Generic_Split``, which
    ``return_splits`` builds, sets ``use_h5 = False``) an item is
    ``torch.load(join(data_dir, 'pt_files', '{slide_id}.pt'))`` and the label. With ``use_h5``
    (``load_from_h5(True)``, used by the evaluation / heatmap code paths) it opens
    ``join(data_dir, 'h5_files', '{slide_id}.h5')`` and returns
    ``(torch.from_numpy(f['features'][:]), label, f['coords'][:])``.
    """

    def __init__(self, data_dir: str | Path, slide_data: pd.DataFrame, use_h5: bool = False) -> None:
        self.data_dir = str(data_dir)
        self.slide_data = slide_data.reset_index(drop=True)
        self.use_h5 = use_h5

    def __len__(self) -> int:
        return len(self.slide_data)

    def __getitem__(self, idx: int):
        slide_id = self.slide_data["slide_id"][idx]
        label = self.slide_data["label"][idx]
        if not self.use_h5:
            full_path = os.path.join(self.data_dir, "pt_files", f"{slide_id}.pt")
            features = torch.load(full_path)  # CLAM passes no other argument
            return features, label
        full_path = os.path.join(self.data_dir, "h5_files", f"{slide_id}.h5")
        with h5py.File(full_path, "r") as hdf5_file:
            features = hdf5_file["features"][:]
            coords = hdf5_file["coords"][:]
        return torch.from_numpy(features), label, coords


# ------------------------------------------------------------------------------------------ STAMP
def stamp_detect_feature_type(feature_dir: Path) -> str:
    """STAMP ``src/stamp/modeling/data.py``: ``detect_feature_type``.

    Every ``*.h5`` under ``feature_dir`` (``rglob``): a file with ``feat_type`` or ``encoder``
    attributes contributes ``str(feat_type)`` (so ``encoder`` without ``feat_type`` gives ``"None"``,
    which ``load_patient_data_`` then refuses as an unknown type); a file with neither counts as
    ``"tile"``. Mixed types or no file are errors.
    """
    types, checked = set(), 0
    for file in Path(feature_dir).rglob("*.h5"):
        checked += 1
        with h5py.File(file, "r") as h5:
            feat_type, encoder = h5.attrs.get("feat_type"), h5.attrs.get("encoder")
            types.add(str(feat_type) if feat_type is not None or encoder is not None else "tile")
    if checked == 0:
        raise RuntimeError("No .h5 feature files found in feature_dir.")
    if len(types) > 1:
        raise RuntimeError(f"Multiple feature types detected in {feature_dir}: {types}")
    feature_type = types.pop()
    if feature_type not in ("tile", "slide", "patient"):  # load_patient_data_'s final else
        raise RuntimeError(f"Unknown feature type: {feature_type}")
    return feature_type


def stamp_slide_to_patient(slide_table: Path, feature_dir: Path) -> dict[Path, str]:
    """STAMP ``data.py``: ``slide_to_patient_from_slide_table_`` with the default column names
    (``PATIENT``, ``FILENAME``): every FILENAME must end in ``.h5``; the bag is ``feature_dir / FILENAME``."""
    df = pd.read_csv(slide_table, usecols=["PATIENT", "FILENAME"], dtype=str)
    for x in df["FILENAME"]:
        if not str(x).endswith(".h5"):
            raise ValueError(f"missing .h5 extension: {x}")
    if not df["FILENAME"].is_unique:  # STAMP: set_index(..., verify_integrity=True)
        raise ValueError("duplicate FILENAME")
    return {Path(feature_dir) / k: p for k, p in df.set_index("FILENAME")["PATIENT"].items()}


def _stamp_stride(coords: np.ndarray) -> float:
    """STAMP ``data.py``: ``get_stride`` (smallest step between distinct x's and between distinct y's)."""
    xs, ys = np.unique(coords[:, 0]), np.unique(coords[:, 1])
    return float(min(np.diff(xs).min(), np.diff(ys).min()))


def stamp_get_coords(h5: h5py.File) -> tuple[np.ndarray, float, int | None]:
    """STAMP ``data.py``: ``get_coords`` -> (coords_um, tile_size_um, tile_size_px).

    ``tile_size`` with ``unit == 'um'`` (STAMP v2), else ``tile_size_um`` (newer STAMP): the coords
    are taken as micrometres as they are; a stride of about 224 means the historic 256 um / 224 px
    format; otherwise "unable to infer coordinates". ``tile_size_px`` from the attribute if present.
    """
    coords = h5["coords"][:]
    tile_size_um = tile_size_px = coords_um = None
    if (tile_size := h5.attrs.get("tile_size", None)) and h5.attrs.get("unit", None) == "um":
        tile_size_um, coords_um = float(tile_size), coords
    elif tile_size := h5.attrs.get("tile_size_um", None):
        tile_size_um, coords_um = float(tile_size), coords
    elif round(h5.attrs.get("tile_size", _stamp_stride(coords))) == 224:
        tile_size_um, tile_size_px, coords_um = 256.0, 224, coords / 224 * 256
    if not tile_size_px and "tile_size_px" in h5.attrs:
        tile_size_px = int(h5.attrs["tile_size_px"])
    if not tile_size_um or coords_um is None:
        raise RuntimeError("unable to infer coordinates from feature file.")
    return coords_um, tile_size_um, tile_size_px


def stamp_load_bag(bag_files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """STAMP ``data.py``: ``BagDataset.__getitem__`` (no bag_size sampling, no transform).

    Opens each file with ``swmr=True, libver='latest'`` (plain open as fallback), reads ``feats``
    (else ``patch_embeddings``) with ``[()]``, coords through ``get_coords``; concatenates a
    patient's files and converts both to float32.
    """
    feats, coords_um = [], []
    for bag_file in bag_files:
        try:
            h5 = h5py.File(bag_file, "r", swmr=True, libver="latest")
        except Exception:  # noqa: BLE001 - STAMP's own fallback
            h5 = h5py.File(bag_file, "r")
        with h5:
            if "feats" in h5:
                obj = h5["feats"]
                if not isinstance(obj, h5py.Dataset):
                    raise RuntimeError(f"expected 'feats' to be an HDF5 dataset but got {type(obj)}")
            else:
                obj = h5["patch_embeddings"]
            feats.append(torch.from_numpy(obj[()]))
            coords_um.append(torch.from_numpy(stamp_get_coords(h5)[0]))
    return torch.concat(feats).float(), torch.concat(coords_um).float()


# ------------------------------------------------------------------------------------------ slideflow
SLIDEFLOW_FORMATS = ["svs", "tif", "ndpi", "vms", "vmu", "scn", "mrxs", "tiff", "svslide", "bif",
                     "jpg", "jpeg", "png", "ome.tif", "ome.tiff"]  # fmt: skip


def slideflow_path_to_name(path: str) -> str:
    """slideflow ``slideflow/util/__init__.py``: ``path_to_name`` (file name without its extension)."""
    file = os.path.basename(path)
    parts = file.split(".")
    if len(parts) == 1:
        return file
    if len(parts) > 2 and ".".join(parts[-2:]) in SLIDEFLOW_FORMATS:
        return ".".join(parts[:-2])
    return ".".join(parts[:-1])


def slideflow_find_bags(bags: str) -> np.ndarray:
    """slideflow ``slideflow/mil/features.py``: ``MILFeatures._find_bags`` for a directory path:
    every file ending in ``.pt``."""
    return np.array([join(bags, f) for f in os.listdir(bags) if f.endswith(".pt")])


def slideflow_load_bag(bag: str) -> torch.Tensor:
    """slideflow ``slideflow/mil/data.py``: ``BagDataset._load`` for a path
    (``torch.load(path).to(torch.float32)``; ``mil/utils.py::_load_bag`` is the same with ``map_location``)."""
    return torch.load(bag).to(torch.float32)


def slideflow_bag_locations(bags: list[str]) -> dict[str, np.ndarray] | None:
    """slideflow ``slideflow/mil/features.py``: ``MILFeatures._get_bag_locations``:
    ``np.load(join(dirname(bag), f'{slide}.index.npz'))['arr_0']`` per bag; None when one is missing."""
    locations = {}
    for bag in bags:
        slide = slideflow_path_to_name(bag)
        index = join(dirname(bag), f"{slide}.index.npz")
        if not exists(index):
            return None
        locations[slide] = np.load(index)["arr_0"]
    return locations


def slideflow_bags_tile_size(bag_path: str) -> tuple[int, int | str]:
    """slideflow ``slideflow/mil/utils.py``: ``_verify_compatible_tile_size``'s read of
    ``bags_config.json`` (it compares ``tile_px`` and ``tile_um`` with the model's)."""
    import json

    with open(join(bag_path, "bags_config.json")) as fh:
        config = json.load(fh)
    assert "tile_px" in config and "tile_um" in config
    return config["tile_px"], config["tile_um"]
