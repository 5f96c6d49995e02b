"""openslide: the vendor formats (Aperio, Hamamatsu, Leica, MIRAX, Philips, Ventana ...), generic tiled
TIFF and (openslide 4) DICOM, from local files."""

from __future__ import annotations

from PIL import Image

from zoomfeat.runtime.errors import SlideError

OPENSLIDE_FORMATS = (
    "Aperio .svs/.tif, Hamamatsu .ndpi/.vms, Leica .scn, MIRAX .mrxs, Philips .tiff, Sakura .svslide, "
    "Ventana .bif, DICOM, and generic *tiled* pyramidal TIFF"
)


def open_openslide(path: str):  # -> openslide.OpenSlide
    """An openslide handle; :class:`SlideError` naming ``path`` when openslide cannot open it."""
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as err:
        raise SlideError(
            f"{path}: not a slide openslide can open ({err}). Supported: {OPENSLIDE_FORMATS}"
        ) from err


class OpenslideBackend:
    """A local slide file read by openslide (handles are safe to share between threads)."""

    name = "openslide"

    def __init__(self, location: str, *, file: str | None = None) -> None:
        self.location = location
        self._osr = open_openslide(file or location)
        self.properties = {str(k): str(v) for k, v in self._osr.properties.items()}
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)

    def read_rgba(self, level: int, x0: int, y0: int, w: int, h: int) -> Image.Image:
        import openslide

        try:
            return self._osr.read_region((int(x0), int(y0)), int(level), (int(w), int(h)))
        except openslide.OpenSlideError as err:
            raise SlideError(
                f"{self.location}: cannot read {w}x{h} px at level {level} from level-0 ({x0}, {y0}): {err} "
                "(corrupt or truncated file?)"
            ) from err

    def close(self) -> None:
        self._osr.close()
