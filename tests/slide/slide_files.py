"""Writers of real slide files for tests/slide and benchmarks/slide_formats.py (imported, not collected)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest


def write_dicom(svs: Path, out: Path) -> Path:
    """A DICOM WSI series of ``svs`` written by wsidicomizer (its JPEG tiles carried over as they are)."""
    wsidicomizer = pytest.importorskip(
        "wsidicomizer", reason="the dicom extra: pip install 'zoomfeat[dicom]'"
    )
    try:
        wsidicomizer.WsiDicomizer.convert(str(svs), str(out))
    except FileNotFoundError as err:  # opentile needs the system's libturbojpeg
        pytest.skip(f"wsidicomizer cannot run here: {err}")
    return out


def write_ome_pyramid(pixels: np.ndarray, path: Path, mpp_nm: float = 499.0, levels: int = 3) -> Path:
    """An OME-TIFF pyramid: level 0 stored losslessly (deflate) in the main IFD, the halved levels
    (PIL Lanczos) in its SubIFDs; the resolution as OME PhysicalSize in nanometres."""
    import tifffile
    from PIL import Image

    pyramid = [pixels]
    for _ in range(levels - 1):
        im = Image.fromarray(pyramid[-1])
        pyramid.append(np.asarray(im.resize((im.width // 2, im.height // 2), Image.LANCZOS)))
    opts = {"tile": (256, 256), "compression": "zlib", "photometric": "rgb"}
    meta = {"axes": "YXS", "PhysicalSizeX": mpp_nm, "PhysicalSizeXUnit": "nm"}
    meta.update(PhysicalSizeY=mpp_nm, PhysicalSizeYUnit="nm")
    with tifffile.TiffWriter(path) as tw:
        tw.write(pyramid[0], subifds=levels - 1, metadata=meta, **opts)
        for level in pyramid[1:]:
            tw.write(level, subfiletype=1, **opts)
    return path


def dicom_second_series(svs: Path, into: Path) -> None:
    """Add a second series of ``svs`` (a new SeriesInstanceUID) to the directory ``into``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = write_dicom(svs, Path(tmp) / "again")
        for f in out.iterdir():
            (into / f"second-{f.name}").write_bytes(f.read_bytes())
