"""zoomfeat.model.checkpoint: the old module's names still resolve to their new homes."""

from __future__ import annotations

from zoomfeat.model import checkpoint, config, official, pretrained
from zoomfeat.runtime import errors, weights


def test_compatibility_names_are_the_new_objects():
    homes = {
        "read_config": config,
        "normalize_arch": config,
        "official_config": config,
        "CONFIG_NAME": config,
        "to_official_state_dict": official,
        "convert_official_state_dict": official,
        "check_keys": official,
        "parse_hub_id": pretrained,
        "hub_file": pretrained,
        "HUB_ID": pretrained,
        "CheckpointError": pretrained,
        "WeightsNotFoundError": errors,
        "load_state_dict_file": weights,
    }
    for name, home in homes.items():
        assert getattr(checkpoint, name) is getattr(home, name), name
    assert checkpoint.CheckpointError is errors.WeightsError
    assert set(checkpoint.__all__) <= set(dir(checkpoint))
