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
