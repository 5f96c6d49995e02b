"""zoomfeat.runtime.weights: weights are read without running code; hub ids and key mismatches named."""

from __future__ import annotations

import collections

import pytest
import torch

from zoomfeat.runtime.errors import WeightsError, WeightsNotFoundError
from zoomfeat.runtime.weights import hub_file, key_mismatch_lines, load_state_dict_file, parse_hub_id


class Payload:  # a pickled object a malicious checkpoint could carry
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_reads_torch_and_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    sd = {"a.weight": torch.randn(2, 3), "b": torch.zeros(1)}
    torch.save(sd, tmp_path / "w.pt")
    save_file(sd, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        got = load_state_dict_file(tmp_path / name)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_wrappers_are_unwrapped_and_bookkeeping_dropped_on_request(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "lightning.ckpt")
    assert list(load_state_dict_file(tmp_path / "lightning.ckpt")) == ["w"]
    torch.save({"teacher": {"w": torch.ones(2)}}, tmp_path / "dino.pth")
    assert list(load_state_dict_file(tmp_path / "dino.pth", wrappers=("state_dict", "teacher"))) == ["w"]
    torch.save({"w": torch.ones(2), "step": 5}, tmp_path / "mixed.pt")
    with pytest.raises(WeightsError, match="entries that are not tensors: step"):
        load_state_dict_file(tmp_path / "mixed.pt")
    assert list(load_state_dict_file(tmp_path / "mixed.pt", tensors_only=True)) == ["w"]


def test_pickled_objects_are_refused_and_never_run(tmp_path, capsys):
    torch.save({"w": torch.ones(1), "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="refusing to load this file"):
        load_state_dict_file(tmp_path / "evil.pt")
    assert "pickled code ran" not in capsys.readouterr().out
    torch.save(collections.OrderedDict(w=torch.ones(1)), tmp_path / "ok.pt")  # plain containers are fine
    assert list(load_state_dict_file(tmp_path / "ok.pt")) == ["w"]


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="checkpoint not found"):
        load_state_dict_file(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.ckpt: not a readable torch checkpoint"):
        load_state_dict_file(tmp_path / "junk.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_state_dict_file(tmp_path / "junk.safetensors")


def test_hub_ids(tmp_path):
    assert parse_hub_id("MahmoodLab/UNI") == ("MahmoodLab/UNI", None)
    for spelling in ("hf-hub:MahmoodLab/UNI", "hf:MahmoodLab/UNI", "hf://MahmoodLab/UNI"):
        assert parse_hub_id(spelling) == ("MahmoodLab/UNI", None)
    subs = {"stonybrook-cvlab/zoomldm": "brca"}
    assert parse_hub_id("StonyBrook-CVLab/ZoomLDM", subs) == ("StonyBrook-CVLab/ZoomLDM", "brca")
    assert parse_hub_id("StonyBrook-CVLab/ZoomLDM/naip", subs) == ("StonyBrook-CVLab/ZoomLDM", "naip")
    assert parse_hub_id("./models/x") is None and parse_hub_id("/abs/path") is None
    local = tmp_path / "owner" / "name"
    local.mkdir(parents=True)
    assert parse_hub_id(str(local)) is None


def test_offline_hub_says_how_to_pass_a_local_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        WeightsNotFoundError, match=r"gated: request access.*local path: encoder.checkpoint=/path"
    ):
        hub_file(
            "nobody-xyz/no-such-repo",
            ["pytorch_model.bin", "model.safetensors"],
            cache_dir=tmp_path,
            what="UNI weights",
            local_hint="encoder.checkpoint=/path/to/pytorch_model.bin",
            gated=True,
        )


def test_key_mismatch_lines_name_every_kind():
    lines = key_mismatch_lines(
        {"a": torch.zeros(2), "extra": torch.zeros(1), "c": torch.zeros(3)},
        {"a": torch.zeros(2), "b": torch.zeros(1), "c": torch.zeros(4)},
    )
    assert lines == [
        "  missing keys (1): b",
        "  unexpected keys (1): extra",
        "  misshapen keys (1): c (file [3], model [4])",
    ]
