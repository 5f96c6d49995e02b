"""The NAIP model's config: the official ``mag_levels`` is read and written back (issue 14)."""

from __future__ import annotations

import copy

import pytest
import torch

from zoomfeat.model import ZoomLDM, read_config
from zoomfeat.model.config import official_config
from zoomfeat.runtime.errors import ConfigError


def _official(num_mags: int | None):
    _, arch = read_config("zoomldm_brca")
    off = official_config(arch)
    params = off["model"]["params"]["cond_stage_config"]["params"]
    if num_mags is not None:
        params["mag_levels"] = num_mags  # configs/zoomldm_naip.yaml
    return off


def test_official_naip_config_loads_and_builds_at_full_size():
    _, arch = read_config(_official(4))
    assert arch["summarizer"]["num_mags"] == 4
    with torch.device("meta"):
        model = ZoomLDM(arch)
    assert sum(p.numel() for p in model.parameters()) == 494_897_313
    assert tuple(model.summarizer.mag_embedding.weight.shape) == (4, 512)


def test_export_writes_mag_levels_and_brca_is_unchanged():
    _, naip = read_config(_official(4))
    cond = official_config(naip)["model"]["params"]["cond_stage_config"]["params"]
    assert cond["mag_levels"] == 4 and "num_mags" not in cond
    _, brca = read_config("zoomldm_brca")
    cond = official_config(brca)["model"]["params"]["cond_stage_config"]["params"]
    assert "mag_levels" not in cond and "num_mags" not in cond
    assert read_config(official_config(naip))[1] == naip  # round trip


def test_conflicting_spellings_are_refused():
    off = _official(4)
    off["model"]["params"]["cond_stage_config"]["params"]["num_mags"] = 8
    with pytest.raises(ConfigError, match="mag_levels"):
        read_config(copy.deepcopy(off))


def test_zoomfeat_naip_config_builds_with_four_levels():
    """conf/model/zoomldm_naip.yaml: the BRCA architecture with 4 magnification levels (1x..4x)."""
    with torch.device("meta"):
        m = ZoomLDM.from_config("zoomldm_naip")
    assert m.summarizer.num_mags == 4 and tuple(m.summarizer.mag_embedding.weight.shape) == (4, 512)
    assert sum(p.numel() for p in m.parameters()) == 494_897_313


def test_out_of_range_magnification_names_the_naip_levels():
    from zoomfeat.model.summarizer import Summarizer

    s = Summarizer(input_channels=8, hidden_channels=16, output_channels=16, num_layers=1, num_heads=2,
                   vit_mlp_dim=16, num_mags=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"valid 0..3 \(0=1x 1=2x 2=3x 3=4x\)"):
        s.check_inputs(torch.zeros(1, 8, 1, 1), torch.tensor([5]))
