"""ZoomLDM: construction, save/load round trips, the load() entry point, attributes, smoke entry."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from zoomfeat.model import ZoomLDM
from zoomfeat.model import checkpoint as ck


def _same_weights(a: ZoomLDM, b: ZoomLDM) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_random() -> ZoomLDM:
    return ZoomLDM.from_config("tiny", seed=1)


def test_from_config_is_seeded_and_leaves_global_rng_alone(tiny_random):
    state = torch.random.get_rng_state()
    again = ZoomLDM.from_config("tiny", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _same_weights(tiny_random, again)
    assert not _same_weights(tiny_random, ZoomLDM.from_config("tiny", seed=2))
    assert tiny_random.checkpoint_id == "random-init"
    assert (
        tiny_random.checkpoint_hash
        == again.checkpoint_hash
        != ZoomLDM.from_config("tiny", seed=2).checkpoint_hash
    )
    assert all(p.dtype == torch.float32 for p in tiny_random.parameters())


def test_attributes(golden_model, full_meta):
    assert (golden_model.ssl_channels, golden_model.context_dim) == (32, 64)
    assert (full_meta.ssl_channels, full_meta.context_dim) == (1024, 512)
    assert full_meta.name == "zoomldm_brca"
    assert (full_meta.latent_channels, full_meta.latent_size, full_meta.image_size) == (3, 64, 256)
    from diffusers import UNet2DConditionModel, VQModel

    assert isinstance(golden_model.unet, UNet2DConditionModel) and isinstance(golden_model.vq, VQModel)
    cfg = golden_model.config
    assert set(cfg) == {"unet", "vq", "summarizer", "diffusion"}
    assert yaml.safe_load(yaml.safe_dump(cfg)) == cfg  # plain data
    assert golden_model.checkpoint_id.endswith("zoomldm_tiny.ckpt")
    assert isinstance(golden_model.checkpoint_hash, str) and len(golden_model.checkpoint_hash) == 16


def test_save_pretrained_round_trip(golden_model, golden_io, tmp_path):
    d = golden_model.save_pretrained(tmp_path / "native")
    assert {p.name for p in d.iterdir()} == {"model.safetensors", "config.yaml"}
    back = ZoomLDM.from_pretrained(d)
    assert _same_weights(back, golden_model)
    assert back.config == golden_model.config and back.name == golden_model.name
    assert back.checkpoint_id == str(d)
    with open(d / "config.yaml") as f:
        doc = yaml.safe_load(f)
    assert doc["zoomfeat"]["source_checkpoint"] == golden_model.checkpoint_id
    with torch.no_grad():
        e = back.eps(golden_io["x_t_250"], golden_io["t_250"], golden_io["cond_unet"])
    assert (e - golden_io["eps_250"]).abs().max() <= 5e-5


def test_save_official_round_trip(golden_model, tiny_random, tmp_path):
    path = golden_model.save_official(tmp_path / "off" / "weights.ckpt")
    with open(path.parent / "config.yaml") as f:
        doc = yaml.safe_load(f)
    assert doc["model"]["target"] == "ldm.models.diffusion.ddpm.LatentDiffusion"
    sd = torch.load(path, weights_only=True)  # plain tensors only
    assert len(sd) == 1574 and list(sd)[:2] == ["betas", "alphas_cumprod"]
    back = ZoomLDM.from_official(path)  # config.yaml found beside it
    assert _same_weights(back, golden_model) and back.config == golden_model.config
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
    with pytest.raises(ck.CheckpointError) as err:
        ZoomLDM.from_pretrained(d)
    msg = str(err.value)
    assert "missing keys (1): summarizer.pad_token" in msg and "unexpected keys (1): vq.extra" in msg
    assert "unet.conv_out.bias (file [4], model [3])" in msg


def test_load_entry_point(golden_model, golden_dir, tmp_path):
    with pytest.raises(ValueError, match="allow_random_weights.*") as err:
        ZoomLDM.load(None)
    assert "StonyBrook-CVLab/ZoomLDM" in str(err.value) and "model.checkpoint=" in str(err.value)
    rnd = ZoomLDM.load(None, config="tiny", allow_random_weights=True, seed=0)
    assert _same_weights(rnd, ZoomLDM.from_config("tiny", seed=0)) and rnd.checkpoint_id == "random-init"
    # official .ckpt with config.yaml beside it / a directory holding both / the named config
    off = tmp_path / "brca"
    off.mkdir()
    shutil.copyfile(golden_dir / "zoomldm_tiny.ckpt", off / "weights.ckpt")
    shutil.copyfile(golden_dir / "zoomldm_tiny.yaml", off / "config.yaml")
    for source in (off / "weights.ckpt", off, str(off)):
        assert _same_weights(ZoomLDM.load(source), golden_model)
    lone = tmp_path / "lone.ckpt"
    shutil.copyfile(golden_dir / "zoomldm_tiny.ckpt", lone)
    assert _same_weights(ZoomLDM.load(lone, config="tiny"), golden_model)
    with pytest.raises(ck.CheckpointError, match="misshapen"):
        ZoomLDM.load(lone)  # default config zoomldm_brca does not fit the tiny weights
    # native directory, and its model.safetensors
    nat = golden_model.save_pretrained(tmp_path / "nat")
    assert _same_weights(ZoomLDM.load(nat), golden_model)
    assert _same_weights(ZoomLDM.load(nat / "model.safetensors"), golden_model)
    # hub id offline (HF_HUB_OFFLINE=1 in the tests), missing paths
    with pytest.raises(ck.WeightsNotFoundError, match="pass the local path"):
        ZoomLDM.load("StonyBrook-CVLab/ZoomLDM")
    with pytest.raises(ck.WeightsNotFoundError, match="no such file"):
        ZoomLDM.load(tmp_path / "missing.ckpt")
    with pytest.raises(ck.WeightsNotFoundError, match="neither model.safetensors"):
        ZoomLDM.load(tmp_path)


def test_encode_condition_noise_taps_pipeline(golden_model, golden_io):
    """The feature recipe end to end on the golden data: encode -> q_sample -> taps."""
    with torch.no_grad():
        z0 = golden_model.encode(golden_io["images"])
        x_t = golden_model.q_sample(z0, golden_io["t_250"], golden_io["noise"])
        assert (x_t - golden_io["x_t_250"]).abs().max() <= 5e-5
        ctx = torch.cat(
            [
                golden_model.condition(golden_io["ssl_raw_mag0"][:1], 0),
                golden_model.condition(golden_io["ssl_raw_mag4"][1:], 4),
            ]
        )
        taps = golden_model.taps(x_t, 250, ctx, ["middle_block"])
    assert (taps["middle_block"][:1] - golden_io["hook.middle_block"]).abs().max() <= 2e-4
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(
        golden_model.q_sample(z0, 10, generator=g1), golden_model.q_sample(z0, 10, generator=g2)
    )
    assert golden_model.null_context(2).shape == (2, 65, 64) and not golden_model.null_context().any()


def test_smoke_entry(capsys):
    from zoomfeat.model.__main__ import main

    shapes = main(["--steps", "1", "--mag", "4"])
    out = capsys.readouterr().out
    assert "ZoomLDM 'tiny'" in out and "latent" in out
    assert shapes["latent"] == (1, 3, 64, 64) and shapes["image"] == (1, 3, 256, 256)
    assert shapes["context"] == (1, 65, 64) and shapes["ssl_grid"] == (1, 32, 16, 16)
    assert shapes["tap middle_block"] == (1, 64, 8, 8)
