"""Constructors, loading, saving and the model hub (zoomfeat.model.pretrained)."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from zoomfeat.model import ZoomLDM
from zoomfeat.model import pretrained as pre
from zoomfeat.runtime.errors import WeightsError, WeightsNotFoundError

from .conftest import UNET_DEPTH, load_tiny, same_weights, save_sd, unet_fan_in
from .tolerances import f32_tol, max_abs


@pytest.fixture(scope="module")
def tiny_random() -> ZoomLDM:
    return ZoomLDM.from_config("tiny", seed=1)


def test_from_config_is_seeded_and_leaves_global_rng_alone(tiny_random):
    state = torch.random.get_rng_state()
    again = ZoomLDM.from_config("tiny", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert same_weights(tiny_random, again)
    assert not same_weights(tiny_random, ZoomLDM.from_config("tiny", seed=2))
    assert tiny_random.checkpoint_id == "random-init"
    assert (
        tiny_random.checkpoint_hash
        == again.checkpoint_hash
        != ZoomLDM.from_config("tiny", seed=2).checkpoint_hash
    )
    assert all(p.dtype == torch.float32 for p in tiny_random.parameters())


def test_save_pretrained_round_trip(golden_model, golden_io, tmp_path):
    d = golden_model.save_pretrained(tmp_path / "native")
    assert {p.name for p in d.iterdir()} == {"model.safetensors", "config.yaml"}
    back = ZoomLDM.from_pretrained(d)
    assert same_weights(back, golden_model)
    assert back.config == golden_model.config and back.name == golden_model.name
    assert back.checkpoint_id == str(d)
    with open(d / "config.yaml") as f:
        doc = yaml.safe_load(f)
    assert doc["zoomfeat"]["source_checkpoint"] == golden_model.checkpoint_id
    with torch.no_grad():
        e = back.eps(golden_io["x_t_250"], golden_io["t_250"], golden_io["cond_unet"])
    # the full UNet's float32 bound (test_unet.py): n = 1152, D = 26
    assert max_abs(e, golden_io["eps_250"]) <= f32_tol(golden_io["eps_250"], unet_fan_in(back), UNET_DEPTH)


def test_save_official_round_trip(golden_model, tiny_random, tmp_path):
    path = golden_model.save_official(tmp_path / "off" / "weights.ckpt")
    with open(path.parent / "config.yaml") as f:
        doc = yaml.safe_load(f)
    assert doc["model"]["target"] == "ldm.models.diffusion.ddpm.LatentDiffusion"
    sd = torch.load(path, weights_only=True)  # plain tensors only
    assert len(sd) == 1574 and list(sd)[:2] == ["betas", "alphas_cumprod"]
    back = ZoomLDM.from_official(path)  # config.yaml found beside it
    assert same_weights(back, golden_model) and back.config == golden_model.config
    # with a separate EMA state: ema=True reads it, ema=False the live weights
    tiny_random.save_official(
        tmp_path / "ema" / "weights.ckpt", ema_unet_state=golden_model.unet.state_dict(), ema_num_updates=5
    )
    ema = ZoomLDM.from_official(tmp_path / "ema" / "weights.ckpt")
    live = ZoomLDM.from_official(tmp_path / "ema" / "weights.ckpt", ema=False)
    us, ue, ul = golden_model.unet.state_dict(), ema.unet.state_dict(), live.unet.state_dict()
    rs = tiny_random.unet.state_dict()
    assert all(torch.equal(ue[k], us[k]) and torch.equal(ul[k], rs[k]) for k in us)
    assert (
        torch.load(tmp_path / "ema" / "weights.ckpt", weights_only=True)["model_ema.num_updates"].item() == 5
    )


def test_native_key_errors(golden_model, tmp_path):
    from safetensors.torch import load_file, save_file

    d = golden_model.save_pretrained(tmp_path / "m")
    state = load_file(str(d / "model.safetensors"))
    del state["summarizer.pad_token"]
    state["unet.conv_out.bias"] = torch.zeros(4)
    state["vq.extra"] = torch.zeros(1)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(WeightsError) as err:
        ZoomLDM.from_pretrained(d)
    msg = str(err.value)
    assert "missing keys (1): summarizer.pad_token" in msg and "unexpected keys (1): vq.extra" in msg
    assert "unet.conv_out.bias (file [4], model [3])" in msg


def test_load_entry_point(golden_model, golden_dir, tmp_path):
    with pytest.raises(ValueError, match="allow_random_weights.*") as err:
        ZoomLDM.load(None)
    assert "StonyBrook-CVLab/ZoomLDM" in str(err.value) and "model.checkpoint=" in str(err.value)
    rnd = ZoomLDM.load(None, config="tiny", allow_random_weights=True, seed=0)
    assert same_weights(rnd, ZoomLDM.from_config("tiny", seed=0)) and rnd.checkpoint_id == "random-init"
    # official .ckpt with config.yaml beside it / a directory holding both / the named config
    off = tmp_path / "brca"
    off.mkdir()
    shutil.copyfile(golden_dir / "zoomldm_tiny.ckpt", off / "weights.ckpt")
    shutil.copyfile(golden_dir / "zoomldm_tiny.yaml", off / "config.yaml")
    for source in (off / "weights.ckpt", off, str(off)):
        assert same_weights(ZoomLDM.load(source), golden_model)
    lone = tmp_path / "lone.ckpt"
    shutil.copyfile(golden_dir / "zoomldm_tiny.ckpt", lone)
    assert same_weights(ZoomLDM.load(lone, config="tiny"), golden_model)
    with pytest.raises(WeightsError, match="misshapen"):
        ZoomLDM.load(lone)  # default config zoomldm_brca does not fit the tiny weights
    # native directory, and its model.safetensors
    nat = golden_model.save_pretrained(tmp_path / "nat")
    assert same_weights(ZoomLDM.load(nat), golden_model)
    assert same_weights(ZoomLDM.load(nat / "model.safetensors"), golden_model)
    # hub id offline (HF_HUB_OFFLINE=1 in the tests), missing paths
    with pytest.raises(WeightsNotFoundError, match="pass the local path"):
        ZoomLDM.load("StonyBrook-CVLab/ZoomLDM")
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        ZoomLDM.load(tmp_path / "missing.ckpt")
    with pytest.raises(WeightsNotFoundError, match="neither model.safetensors"):
        ZoomLDM.load(tmp_path)


def test_pickled_objects_are_refused(tiny_sd, golden_dir, tmp_path):
    import argparse

    sd = dict(tiny_sd)
    sd["hparams"] = argparse.Namespace(lr=1.0)
    path = save_sd(sd, tmp_path / "pickled.ckpt")
    with pytest.raises(WeightsError, match="refusing to load.*argparse.Namespace.*never runs code"):
        load_tiny(path, golden_dir)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(WeightsError, match="garbage.ckpt: not a readable torch checkpoint"):
        load_tiny(garbage, golden_dir)
    save_sd({"a": torch.zeros(1), "epoch": 3}, tmp_path / "nt.ckpt")
    with pytest.raises(WeightsError, match="not tensors: epoch"):
        load_tiny(tmp_path / "nt.ckpt", golden_dir)
    with pytest.raises(WeightsNotFoundError, match="checkpoint not found"):
        load_tiny(tmp_path / "nope.ckpt", golden_dir)


def test_wrapped_and_safetensors_checkpoints(golden_model, tiny_sd, golden_dir, tmp_path):
    from safetensors.torch import save_file

    wrapped = save_sd({"state_dict": tiny_sd, "epoch": 7, "global_step": 100}, tmp_path / "last.ckpt")
    st = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_sd.items()}, str(st))
    ref = golden_model.state_dict()
    for path in (wrapped, st):
        m = load_tiny(path, golden_dir)
        assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())


# ---------------------------------------------------------------- model hub


def test_parse_hub_id():
    assert pre.parse_hub_id("StonyBrook-CVLab/ZoomLDM") == ("StonyBrook-CVLab/ZoomLDM", "brca")
    assert pre.parse_hub_id("hf://StonyBrook-CVLab/ZoomLDM/other") == ("StonyBrook-CVLab/ZoomLDM", "other")
    assert pre.parse_hub_id("me/my-model") == ("me/my-model", None)
    assert pre.parse_hub_id("/abs/path") is None
    assert pre.parse_hub_id("./rel/path") is None
    assert pre.parse_hub_id("weights.ckpt") is None


def test_hub_offline_without_cache_says_how_to_pass_a_path(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        ZoomLDM.from_pretrained("StonyBrook-CVLab/ZoomLDM", cache_dir=tmp_path)
    msg = str(err.value)
    assert "ZoomLDM config.yaml" in msg and "hub repo StonyBrook-CVLab/ZoomLDM/brca" in msg
    assert "pass the local path" in msg and "from_official('/path/to/weights.ckpt')" in msg
    assert "model.checkpoint=" in msg


def _fake_hub_cache(root, repo, files):
    """huggingface_hub's cache layout: models--owner--name/{refs/main, snapshots/<rev>/...}."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    for rel, src in files.items():
        dst = base / "snapshots" / rev / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def test_hub_id_from_cache(golden_model, golden_dir, tmp_path):
    _fake_hub_cache(
        tmp_path,
        "StonyBrook-CVLab/ZoomLDM",
        {
            "brca/weights.ckpt": golden_dir / "zoomldm_tiny.ckpt",
            "brca/config.yaml": golden_dir / "zoomldm_tiny.yaml",
        },
    )
    m = ZoomLDM.from_pretrained("StonyBrook-CVLab/ZoomLDM", cache_dir=tmp_path)
    assert m.checkpoint_id == "StonyBrook-CVLab/ZoomLDM/brca"
    ref = golden_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())
    assert m.checkpoint_hash == golden_model.checkpoint_hash
