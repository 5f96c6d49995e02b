"""Slide ids: the file name without its extension, compound extensions included, as TRIDENT names them.

Bags are named ``{slide_id}.h5``, so the id must be the one the other tools of the TRIDENT family
derive from the same file. TRIDENT (``trident/IO.py::splitext``, used by ``WSI.__init__`` for
``self.name``) strips ``.ome.tif``, ``.ome.tiff`` and ``.ome.zarr`` whole (case-insensitively) and
otherwise behaves like ``os.path.splitext`` on the base name: ``x.ome.tiff`` -> ``x``,
``TCGA-01.v2.svs`` -> ``TCGA-01.v2``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: extensions of two parts, stripped whole (TRIDENT's ``COMPOUND_EXTENSIONS``)
COMPOUND_EXTENSIONS = (".ome.tif", ".ome.tiff", ".ome.zarr")


def slide_id_from_path(path: str | os.PathLike) -> str:
    """The slide id of a slide file: its base name without the (compound) extension."""
    name = Path(path).name
    lower = name.lower()
    for ext in COMPOUND_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def slide_id_from_location(location: str | os.PathLike, is_dir: bool = False) -> str:
    """The slide id of a file, a URL (query string dropped) or, with ``is_dir``, a directory holding
    one DICOM series (its whole name: ``case.001/`` -> ``case.001``). The name is the one the slide
    is listed under: a symlink is never resolved."""
    text = str(location).split("?", 1)[0].rstrip("/")
    name = text.rsplit("/", 1)[-1] if "://" in text else Path(text).name
    return name if is_dir else slide_id_from_path(name)
