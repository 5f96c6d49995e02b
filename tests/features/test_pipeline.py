"""zoomfeat.features.pipeline: the Extractor reuses complete bags and refuses bags of another config."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from zoomfeat.bags import bag_path, open_bag
from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.pipeline import ConfigMismatchError, Extractor, extract_slide


def test_complete_bags_are_skipped_and_a_changed_config_is_not_reused(
    tiny, reference_run, small_slides, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    slide = small_slides / "det_b.svs"
    zpath = bag_path(out, "zoomldm_20x", "det_b")
    before = zpath.stat().st_mtime_ns
    upath = bag_path(out, "uni_20x", "det_b")
    uni_before = (upath.stat().st_mtime_ns, upath.read_bytes())

    same = Extractor(ExtractConfig.from_kwargs(**tiny, batch_size=8))  # batch size is not part of the recipe
    result = same.extract(slide, out)
    assert result.status == "skipped" and zpath.stat().st_mtime_ns == before

    other = Extractor(ExtractConfig.from_kwargs(**tiny, **{"features.timestep": 300}))
    assert other.config_hash != same.config_hash
    with pytest.raises(ConfigMismatchError, match=r"timestep: 200 -> 300.*overwrite=true"):
        other.extract(slide, out)
    assert zpath.stat().st_mtime_ns == before  # nothing touched
    with pytest.raises(ConfigMismatchError, match="timestep"):
        extract_slide(slide, out, **{**tiny, "features.timestep": 300})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = extract_slide(slide, out, **tiny, **{"features.timestep": 300}, overwrite=True)
    new = open_bag(paths["zoomldm_20x"])
    old = open_bag(bag_path(reference_run, "zoomldm_20x", "det_b"))
    assert new.attrs["timestep"] == 300 and new.attrs["config_hash"] == other.config_hash
    assert np.abs(new.features - old.features).max() > 1e-3  # recomputed, not reused
    # the UNI sets do not depend on the timestep: their family's own hash matches, so they are kept
    # byte for byte (issue 12: each family carries its own config hash)
    assert open_bag(paths["uni_20x"]).attrs["config_hash"] == other.families["uni"].hash != other.config_hash
    assert (upath.stat().st_mtime_ns, upath.read_bytes()) == uni_before
    # a killed overwrite run resumes: bags already complete with the new config are kept
    stamp = paths["zoomldm_20x"].stat().st_mtime_ns
    again = Extractor(
        ExtractConfig.from_kwargs(**tiny, **{"features.timestep": 300}, overwrite=True)
    ).extract(slide, out)
    assert again.status == "skipped" and paths["zoomldm_20x"].stat().st_mtime_ns == stamp
