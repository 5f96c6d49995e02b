"""Synthetic whole-slide images for tests, demos and benchmarks.

Writes tiled, multi-page pyramidal TIFFs with tifffile that openslide opens:

- ``vendor="aperio"``: an Aperio-style ImageDescription (``Aperio ...|AppMag = 40|MPP = 0.25``),
  so openslide reports vendor ``aperio``, ``openslide.mpp-x`` and the objective power;
- ``vendor="generic"``: a plain tiled TIFF carrying MPP only in its resolution tags;
- ``vendor="none"``: a plain tiled TIFF with no resolution information at all.

The picture is H&E-like: pink/purple blobs of "tissue" with nuclei-like dots on a white
background, reproducible from ``seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def synthetic_he_image(
    width: int, height: int, *, seed: int = 0, tissue_fraction: float = 0.4, blob_px: int | None = None
) -> np.ndarray:
    """An RGB uint8 (height, width, 3) H&E-like picture: tissue blobs on white."""
    rng = np.random.default_rng(seed)
    blob_px = blob_px or max(32, min(width, height) // 6)
    # Low-resolution random field, smoothed and upsampled: blob-shaped tissue regions.
    gh, gw = max(2, height // blob_px + 2), max(2, width // blob_px + 2)
    field = rng.random((gh, gw))
    from PIL import Image

    field_img = Image.fromarray((field * 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    smooth = np.asarray(field_img, dtype=np.float32) / 255.0
    threshold = np.quantile(smooth, 1.0 - tissue_fraction) if tissue_fraction > 0 else 2.0
    tissue = smooth >= threshold
    img = np.full((height, width, 3), 245, np.uint8)
    # eosin-pink stroma with texture, haematoxylin-purple nuclei
    texture = rng.integers(-18, 18, size=(height, width, 1), dtype=np.int16)
    pink = np.clip(np.array([222, 150, 190], np.int16) + texture, 0, 255).astype(np.uint8)
    img[tissue] = pink[tissue]
    nuclei = tissue & (rng.random((height, width)) < 0.02)
    img[nuclei] = (90, 50, 140)
    return img


def synthetic_artefact_image(
    width: int = 2048, height: int = 2048, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """H&E-like tissue plus the artefacts tissue detection must ignore, with the truth.

    White background; a bluish-black scan border along the left and top edges (noisy) that fades
    into the glass through a dark, slightly tinted grey band;
    a grey glass region (slightly tinted, noisy, with a brightness gradient) in the upper right;
    tissue blobs in the lower middle. Returns ``(rgb uint8 (h, w, 3), {"tissue", "black",
    "grey"})`` where each value is a bool (h, w) mask of what was painted there.
    """
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 245, np.uint8)
    truth = {k: np.zeros((height, width), bool) for k in ("tissue", "black", "grey")}
    # tissue: lower middle
    ty0, ty1, tx0, tx1 = int(height * 0.45), int(height * 0.95), int(width * 0.25), int(width * 0.75)
    patch = synthetic_he_image(tx1 - tx0, ty1 - ty0, seed=seed + 1, tissue_fraction=0.55)
    img[ty0:ty1, tx0:tx1] = patch
    truth["tissue"][ty0:ty1, tx0:tx1] = (patch != 245).any(axis=2)
    # grey glass: upper right, tinted by a few levels, gradient 150 -> 215, noise
    gy0, gy1, gx0, gx1 = int(height * 0.12), int(height * 0.4), int(width * 0.55), int(width * 0.95)
    ramp = np.linspace(150, 215, gx1 - gx0, dtype=np.float32)[None, :, None]
    grey = ramp + np.array([0, 3, 6], np.float32) + rng.normal(0, 4, size=(gy1 - gy0, gx1 - gx0, 3))
    img[gy0:gy1, gx0:gx1] = np.clip(grey, 0, 255).astype(np.uint8)
    truth["grey"][gy0:gy1, gx0:gx1] = True
    # black scan border, left and top: bluish-black with noise (tiny values, high HSV saturation),
    # fading into the glass through a dark, slightly tinted grey band (a blurred scan edge)
    bx, by = max(2, width // 12), max(2, height // 16)
    band = max(1, width // 40)
    border = np.zeros((height, width), bool)
    border[:, : bx + band] = True
    border[: by + band, :] = True
    noise = np.clip(rng.normal(0, 4, size=(height, width, 3)) + np.array([16, 12, 28]), 0, 255)
    dist = np.minimum(np.arange(width)[None, :] - bx, np.arange(height)[:, None] - by).astype(np.float32)
    fade = np.clip(dist / band, 0, 1)[..., None]  # 0 inside the black border, 1 on the glass side
    grey_band = 40 + 90 * fade + np.array([0, 2, 8], np.float32) + rng.normal(0, 3, size=(height, width, 3))
    painted = np.where(fade > 0, grey_band, noise)
    img[border] = np.clip(painted, 0, 255).astype(np.uint8)[border]
    truth["black"] = border
    for key in ("tissue", "grey"):
        truth[key] &= ~border
    return img, truth


def _pyramid(base: np.ndarray, levels: int) -> list[np.ndarray]:
    from PIL import Image

    out = [base]
    for _ in range(1, levels):
        prev = out[-1]
        h, w = prev.shape[:2]
        if min(h, w) < 2:
            break
        out.append(
            np.asarray(Image.fromarray(prev).resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX))
        )
    return out


def write_synthetic_slide(
    path: str | Path,
    *,
    width: int = 4096,
    height: int = 4096,
    mpp: float | None = 0.25,
    levels: int = 4,
    vendor: str = "aperio",
    seed: int = 0,
    tissue_fraction: float = 0.4,
    image: np.ndarray | None = None,
    tile: int = 256,
    compression: str = "jpeg",
) -> Path:
    """Write a pyramidal tiled TIFF that openslide opens; returns ``path``.

    Args:
        path: output file (``.svs`` for aperio, ``.tif``/``.tiff`` otherwise).
        width, height: level-0 size in pixels (ignored when ``image`` is given).
        mpp: microns per pixel at level 0; ``None`` writes no MPP anywhere.
        levels: pyramid levels, each half the size of the previous.
        vendor: ``"aperio"``, ``"generic"`` (MPP in resolution tags) or ``"none"`` (no MPP).
        image: an RGB uint8 level-0 picture to use instead of the synthetic one.
        compression: ``"jpeg"`` (needs imagecodecs) or ``"none"``/``"zlib"``.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = (
        image
        if image is not None
        else synthetic_he_image(width, height, seed=seed, tissue_fraction=tissue_fraction)
    )
    if base.dtype != np.uint8 or base.ndim != 3 or base.shape[2] != 3:
        raise ValueError("image must be uint8 (H, W, 3)")
    height, width = base.shape[:2]
    pyramid = _pyramid(base, levels)
    comp = None if compression == "none" else compression
    kwargs: dict[str, Any] = {"compression": comp, "photometric": "rgb"}
    if comp == "jpeg":
        kwargs["compressionargs"] = {"level": 90}
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, level in enumerate(pyramid):
            h, w = level.shape[:2]
            extra: dict = {}
            if vendor == "aperio":
                desc = f"Aperio Image Library v12.0.0\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q=90"
                if i == 0:
                    if mpp:
                        desc += f"|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}"
                else:
                    desc = f"Aperio Image Library v12.0.0\r\n{width}x{height} -> {w}x{h} - "
                extra["description"] = desc
            elif vendor == "generic" and mpp:
                # resolution tags in pixels per centimetre
                ppcm = 1e4 / (mpp * (width / w))
                extra["resolution"] = (ppcm, ppcm)
                extra["resolutionunit"] = "CENTIMETER"
            elif vendor not in ("aperio", "generic", "none"):
                raise ValueError(f"unknown vendor {vendor!r}: use 'aperio', 'generic' or 'none'")
            # Levels smaller than a tile are still written tiled (openslide wants tiles).
            tif.write(
                level, tile=(tile, tile), metadata=None, subfiletype=0 if i == 0 else 1, **kwargs, **extra
            )
    return path
