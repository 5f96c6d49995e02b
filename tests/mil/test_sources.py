"""zoomfeat.mil.sources: the bag source layouts ``task.bags`` may take (globs: test_trident_dirs.py)."""

import pytest

from zoomfeat.bags import bag_path
from zoomfeat.mil.sources import resolve_source
from zoomfeat.runtime.errors import BagError

from .bagfactory import planted_bags, write_bags


def test_resolve_source_layouts(tmp_path):
    table, feats = planted_bags(n_cases=2, dim=4)
    slide = next(iter(feats))
    # zoomfeat.extract layout: {out}/20x_256px_0px_overlap/features_uni_20x/
    path = bag_path(tmp_path / "extract", "uni_20x", slide)
    write_bags(path.parent.parent, "uni_20x", feats)
    assert resolve_source(tmp_path / "extract", "uni_20x") == path.parent
    assert resolve_source(path.parent.parent, "uni_20x") == path.parent
    assert (
        resolve_source(str(tmp_path / "extract" / "20x_256px_0px_overlap" / "features_{set}"), "uni_20x")
        == path.parent
    )
    assert resolve_source(path.parent, "uni_20x") == path.parent
    with pytest.raises(BagError, match="no bags for feature set 'zoomldm_5x'"):
        resolve_source(tmp_path / "extract", "zoomldm_5x")
    with pytest.raises(BagError, match="no bag source"):
        resolve_source(tmp_path / "absent", "uni_20x")
