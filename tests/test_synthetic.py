import numpy as np
import openslide
import pytest


@pytest.mark.parametrize(
    "vendor,mpp_prop,vendor_prop",
    [("aperio", "0.25", "aperio"), ("generic", "0.25", "generic-tiff"), ("none", None, "generic-tiff")],
)
def test_synthetic_slides_open_in_openslide(synthetic_slide_factory, vendor, mpp_prop, vendor_prop):
    path = synthetic_slide_factory(f"syn_{vendor}", width=1024, height=768, levels=3, vendor=vendor)
    s = openslide.OpenSlide(str(path))
    assert s.properties["openslide.vendor"] == vendor_prop
    assert s.properties.get("openslide.mpp-x") == mpp_prop
    assert s.level_count == 3 and s.dimensions == (1024, 768)
    region = np.asarray(s.read_region((0, 0), 0, (1024, 768)).convert("RGB"))
    assert (region.min(axis=2) < 200).mean() > 0.2  # there is tissue
    assert (region.min(axis=2) > 230).mean() > 0.2  # and background
