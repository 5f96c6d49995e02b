"""Real files of every kind, made from the CMU slide: a DICOM series (wsidicomizer), an OME-TIFF
pyramid (tifffile, SubIFDs), a PNG; and real servers on 127.0.0.1 (tests/slide/servers.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # servers.py


@pytest.fixture(scope="session")
def cmu_pixels(cmu_slide) -> np.ndarray:
    """The whole CMU slide at level 0, decoded by openslide (RGB uint8, 2967 x 2220)."""
    from zoomfeat.slide import Slide

    with Slide.open(cmu_slide) as s:
        w, h = s.dimensions
        return s.read_box(0, 0, w, h, w, h)


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


@pytest.fixture(scope="session")
def cmu_dicom(cmu_slide, tmp_path_factory) -> Path:
    return write_dicom(cmu_slide, tmp_path_factory.mktemp("dicom") / "CMU-1-dicom")


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


@pytest.fixture(scope="session")
def cmu_ome(cmu_pixels, tmp_path_factory) -> Path:
    return write_ome_pyramid(cmu_pixels, tmp_path_factory.mktemp("ome") / "CMU-1.ome.tiff")


@pytest.fixture(scope="session")
def cmu_png(cmu_pixels, tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("png") / "CMU-1.png"
    Image.fromarray(cmu_pixels).save(path)
    return path


@pytest.fixture
def slide_copy(cmu_slide, tmp_path) -> Path:
    """A private copy of the CMU slide (tests that change it)."""
    return Path(shutil.copy(cmu_slide, tmp_path / "copy.svs"))
