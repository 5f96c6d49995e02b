"""zoomfeat.encoders.base: preprocessing and safe, strict weight loading (through the tiny encoder)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from zoomfeat.encoders import build_encoder
from zoomfeat.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from zoomfeat.runtime.errors import WeightsError, WeightsNotFoundError


def test_preprocess_normalises_with_imagenet_stats_and_resizes():
    enc = build_encoder("tiny")
    flat = torch.full((1, 256, 256, 3), 200, dtype=torch.uint8)
    x = enc.preprocess(flat)
    want = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    # float32 rounding: the antialiased bilinear 256 -> 224 resize sums at most n = 5 taps per axis
    # in D = 2 passes on values <= 1, then (x - mean) / std scales errors by 1 / min(std) = 4.4:
    # 2 * eps32 * 4.4 * sqrt(5 * 2) = 3.3e-6 (measured 1.2e-6 at value 255)
    atol = 2 * 2.0**-23 / min(IMAGENET_STD) * math.sqrt(5 * 2)
    assert torch.allclose(x[0, :, 10, 10], want, rtol=0, atol=atol)
    assert torch.allclose(x[0].flatten(1).std(dim=1), torch.zeros(3), rtol=0, atol=atol)
    # a 224 px tile goes through unresized; channel order is RGB
    t = torch.zeros((1, 224, 224, 3), dtype=torch.uint8)
    t[..., 0] = 255
    x = enc.preprocess(t)
    assert torch.allclose(x[0, 0], torch.full((224, 224), (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        enc.preprocess(torch.zeros((1, 3, 256, 256), dtype=torch.uint8))


def test_key_mismatch_is_a_clear_error(tmp_path):
    state = dict(build_encoder("tiny").vit.state_dict())
    bad = dict(state)
    bad.pop("blocks.1.mlp.fc2.weight")
    bad["extra.thing"] = torch.zeros(2)
    bad["cls_token"] = torch.zeros(1, 1, 48)
    path = tmp_path / "bad.bin"
    torch.save(bad, path)
    with pytest.raises(WeightsError) as err:
        build_encoder("tiny", checkpoint=str(path))
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1): blocks.1.mlp.fc2.weight" in msg
    assert "unexpected keys (1): extra.thing" in msg
    assert "cls_token (file [1, 1, 48], model [1, 1, 32])" in msg
    # a tiny state dict is not UNI (checked without building ViT-L weights)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"(?s)UNI checkpoint .*missing keys \(\d+\)"):
        build_encoder("uni", checkpoint=str(path))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"cls_token": _Evil()}, f)
    with pytest.raises(WeightsError, match="weights-only"):
        build_encoder("tiny", checkpoint=str(path))
    assert "this must never run" not in capsys.readouterr().out


def test_missing_files(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_encoder("tiny", checkpoint=str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="holds none of"):
        build_encoder("tiny", checkpoint=str(tmp_path))
