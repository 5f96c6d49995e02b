"""The model training starts from: init weights of the wrong architecture are clear errors."""

from __future__ import annotations

import pytest
import torch

from zoomfeat.runtime.errors import WeightsError
from zoomfeat.training.config import ModelSection
from zoomfeat.training.model_init import build_model, expected_architecture, load_init


def test_init_of_another_architecture_is_a_clear_error(tmp_path, golden_dir):
    from zoomfeat.model import ZoomLDM

    # an official checkpoint that does not fit the requested architecture
    with pytest.raises(
        WeightsError, match=r"init checkpoint .*zoomldm_tiny.ckpt cannot be loaded as model=zoomldm_brca"
    ):
        load_init(str(golden_dir / "zoomldm_tiny.ckpt"), "zoomldm_brca")
    # a pretrained dir (its own config beside it) of another architecture
    tiny_dir = ZoomLDM.from_config("tiny", seed=0).save_pretrained(tmp_path / "tiny_model")
    with pytest.raises(
        WeightsError,
        match=r"has another architecture than model=zoomldm_brca.*model_channels=32.*model_channels=192",
    ):
        load_init(str(tiny_dir), "zoomldm_brca")
    with pytest.raises(FileNotFoundError, match="nothing_here: no such file or directory"):
        load_init(str(tmp_path / "nothing_here"), "tiny")


def test_golden_init_and_section_forms(golden_dir):
    from zoomfeat.model import ZoomLDM

    golden = load_init(str(golden_dir / "zoomldm_tiny.ckpt"), "tiny")
    ref = ZoomLDM.from_official(golden_dir / "zoomldm_tiny.ckpt", config=golden_dir / "zoomldm_tiny.yaml")
    assert all(torch.equal(golden.unet.state_dict()[k], v) for k, v in ref.unet.state_dict().items())
    # a section by name and one carrying the group file's sections are the same architecture
    import yaml

    from zoomfeat.runtime.resources import config_file

    full = ModelSection(**yaml.safe_load(config_file("model", "tiny").read_text()))
    assert expected_architecture(full) == expected_architecture("tiny")
    a, b = build_model(full, None, seed=3), build_model(ModelSection("tiny"), None, seed=3)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
