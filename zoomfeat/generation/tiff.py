"""Pyramidal tiled TIFF output for large generated images (QuPath and openslide open it).

[I] Layout (OpenSlide's "generic tiled TIFF"): one tiled RGB page per pyramid level, full
resolution first, each next level halved (2x2 box average) until the longest side is <= one
tile; every reduced level is a separate IFD marked ``NewSubfileType = 1`` (reduced image).
Tiles 256x256, lossless deflate (or JPEG on request); X/Y resolution in pixels per centimetre
from the microns per pixel (20x = 0.5 um/px), which openslide reports as ``tiff.XResolution`` and
zoomfeat's slide reader turns back into the MPP. Written atomically (``runtime.atomic``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoomfeat.runtime.atomic import atomic_path
from zoomfeat.runtime.errors import InputError

TILE = 256
COMPRESSIONS = ("deflate", "jpeg", "none")


def pyramid(image: np.ndarray, tile: int = TILE) -> list[np.ndarray]:
    """Levels of ``image`` (H, W, 3) uint8: full size, then 2x box-downsampled until <= ``tile``."""
    levels = [image]
    while max(levels[-1].shape[:2]) > tile:
        x = levels[-1]
        h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
        if h == 0 or w == 0:
            break
        x = x[:h, :w].astype(np.float32)
        x = (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4
        levels.append(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    return levels


def write_pyramidal_tiff(
    path: str | Path, image: np.ndarray, *, mpp: float = 0.5, compression: str = "deflate", tile: int = TILE
) -> Path:
    """Write ``image`` (H, W, 3) uint8 as a tiled pyramidal TIFF at ``mpp`` microns per pixel."""
    import tifffile

    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"{path}: a pyramidal TIFF needs an RGB uint8 image (H, W, 3), got {image.shape} {image.dtype}"
        )
    if compression not in COMPRESSIONS:
        raise InputError(f"TIFF compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    comp = {"deflate": "adobe_deflate", "jpeg": "jpeg", "none": None}[compression]
    path = Path(path)
    px_per_cm = 1e4 / float(mpp)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tif:
            for k, level in enumerate(pyramid(image, tile)):
                scale = 2**k
                tif.write(
                    level,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression=comp,
                    subfiletype=1 if k else 0,
                    resolution=(px_per_cm / scale, px_per_cm / scale),
                    resolutionunit="CENTIMETER",
                    description=f"zoomfeat generated image; level {k}; {mpp * scale:g} um/px"
                    if k == 0
                    else None,
                    metadata=None,
                )
    return path
