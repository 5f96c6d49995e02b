"""zoomfeat.encoders: the tiny and UNI tile encoders, preprocessing and safe weight loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from zoomfeat.encoders import EMBED_DIM, build_encoder
from zoomfeat.encoders.base import IMAGENET_MEAN, IMAGENET_STD


def _tiles(n=3, px=256, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, px, px, 3), dtype=np.uint8))


def test_tiny_interface_and_seeded_determinism():
    enc = build_encoder("tiny")
    assert enc.embed_dim == EMBED_DIM["tiny"] == 32
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert enc.checkpoint_id == "random-init(seed=0)"
    x = enc.preprocess(_tiles())
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    y = enc(x)
    assert y.shape == (3, 32) and torch.isfinite(y).all() and y.std() > 0.1
    assert y.std(dim=0).mean() > 0.02  # embeddings depend on the image even with random weights
    # same seed -> identical weights and outputs; another seed -> different ones
    again = build_encoder("tiny")
    assert torch.equal(again(again.preprocess(_tiles())), y)
    other = build_encoder("tiny", seed=1)
    assert not torch.allclose(other(other.preprocess(_tiles())), y)
    # building does not disturb the caller's global RNG stream
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    build_encoder("tiny")
    assert torch.equal(torch.rand(3), a)


def test_preprocess_normalises_with_imagenet_stats_and_resizes():
    enc = build_encoder("tiny")
    flat = torch.full((1, 256, 256, 3), 200, dtype=torch.uint8)
    x = enc.preprocess(flat)
    want = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0, :, 10, 10], want, atol=1e-5)
    assert torch.allclose(x[0].flatten(1).std(dim=1), torch.zeros(3), atol=1e-5)
    # a 224 px tile goes through unresized; channel order is RGB
    t = torch.zeros((1, 224, 224, 3), dtype=torch.uint8)
    t[..., 0] = 255
    x = enc.preprocess(t)
    assert torch.allclose(x[0, 0], torch.full((224, 224), (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        enc.preprocess(torch.zeros((1, 3, 256, 256), dtype=torch.uint8))


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "dir"])
def test_tiny_roundtrip_through_checkpoint_files(tmp_path, fmt):
    from safetensors.torch import save_file

    src = build_encoder("tiny", seed=7)
    state = {k: v.contiguous() for k, v in src.vit.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "tiny.safetensors"
        save_file(state, str(path))
    elif fmt == "bin":
        path = tmp_path / "pytorch_model.bin"
        torch.save({"module." + k: v for k, v in state.items()}, path)  # DDP-style prefix is stripped
    else:
        path = tmp_path / "weights"
        path.mkdir()
        torch.save(state, path / "pytorch_model.bin")
    enc = build_encoder("tiny", checkpoint=str(path))
    x = src.preprocess(_tiles(2))
    assert torch.equal(enc(x), src(x))
    assert str(tmp_path) in enc.checkpoint_id and len(enc.checkpoint_hash) == 16


def test_key_mismatch_is_a_clear_error(tmp_path):
    state = dict(build_encoder("tiny").vit.state_dict())
    bad = dict(state)
    bad.pop("blocks.1.mlp.fc2.weight")
    bad["extra.thing"] = torch.zeros(2)
    bad["cls_token"] = torch.zeros(1, 1, 48)
    path = tmp_path / "bad.bin"
    torch.save(bad, path)
    with pytest.raises(ValueError) as err:
        build_encoder("tiny", checkpoint=str(path))
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1): blocks.1.mlp.fc2.weight" in msg
    assert "unexpected keys (1): extra.thing" in msg
    assert "cls_token (file [1, 1, 48], model [1, 1, 32])" in msg
    # a tiny state dict is not UNI (checked without building ViT-L weights)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"(?s)UNI checkpoint .*missing keys \(\d+\)"):
        build_encoder("uni", checkpoint=str(path))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"cls_token": _Evil()}, f)
    with pytest.raises(ValueError, match="weights-only"):
        build_encoder("tiny", checkpoint=str(path))
    assert "this must never run" not in capsys.readouterr().out


def test_missing_files_and_unknown_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder("tiny", checkpoint=str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="holds none of"):
        build_encoder("tiny", checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match="unknown encoder 'vit'"):
        build_encoder("vit")


def test_uni_without_weights_says_how_to_get_them(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine is offline; never try the network
    with pytest.raises(RuntimeError) as err:
        build_encoder("uni")
    msg = str(err.value)
    for needle in ("MahmoodLab/UNI", "gated", "HF_TOKEN", "encoder.checkpoint=", "allow_random_weights=true"):
        assert needle in msg


@pytest.mark.slow
def test_uni_architecture_random_and_from_local_file(tmp_path):
    """Full-size UNI: seeded random init (flag), saved and loaded back as a local safetensors file."""
    from safetensors.torch import save_file

    with pytest.warns(UserWarning, match="RANDOM weights"):
        uni = build_encoder("uni", allow_random_weights=True)
    assert uni.embed_dim == 1024
    assert sum(p.numel() for p in uni.parameters()) == 303_350_784  # ViT-L/16 without head
    blocks = uni.vit.blocks
    assert len(blocks) == 24 and torch.allclose(blocks[0].ls1.gamma, torch.full((1024,), 1e-5))  # init_values
    x = uni.preprocess(_tiles(1))
    y = uni(x)
    assert y.shape == (1, 1024)
    path = tmp_path / "uni.safetensors"
    save_file({k: v.contiguous() for k, v in uni.vit.state_dict().items()}, str(path))
    loaded = build_encoder("uni", checkpoint=str(path))
    assert loaded.checkpoint_id == str(path)
    assert torch.equal(loaded(x), y)
    # dynamic_img_size: a 256 px input runs too (UNI may be fed unresized tiles)
    assert loaded(torch.zeros(1, 3, 256, 256)).shape == (1, 1024)
