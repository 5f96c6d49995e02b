"""Official checkpoint layout <-> native modules: full-size key map, round trips, clear errors."""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict

import pytest
import torch
import yaml

from zoomfeat.model import ZoomLDM
from zoomfeat.model import checkpoint as ck
from zoomfeat.model.schedule import official_buffers

FULL_COUNTS = {"unet": 400_920_579, "vq": 55_322_782, "summarizer": 38_656_000}


@pytest.fixture(scope="module")
def full_keys(golden_dir):
    with open(golden_dir / "zoomldm_full_keys.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny_sd(golden_ckpt):
    return torch.load(golden_ckpt, map_location="cpu", weights_only=True)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- full size, meta device


def test_full_size_parameter_counts_on_meta(full_meta, full_keys):
    assert all(p.is_meta for p in full_meta.parameters())
    assert {k: _count(getattr(full_meta, k)) for k in FULL_COUNTS} == FULL_COUNTS
    assert _count(full_meta) == full_keys["param_counts"]["total_parameters(LatentDiffusion.parameters())"]
    vq = full_meta.vq
    enc = _count(vq.encoder) + _count(vq.quant_conv)
    dec = _count(vq.decoder) + _count(vq.post_quant_conv)
    assert (enc, dec, _count(vq.quantize)) == (22_337_423, 32_960_783, 24_576)


def test_full_size_official_layout_is_exact(full_meta, full_keys):
    """Export names, shapes and order = every entry of the official full-size state_dict."""
    mine = [(k, list(s)) for k, s in ck.official_layout(full_meta).items()]
    ref = [(e["key"], e["shape"]) for e in full_keys["keys"]]
    assert len(ref) == full_keys["n_keys"] == 1750
    assert mine == ref


@pytest.mark.parametrize("ema", [True, False])
def test_full_size_converter_maps_every_key(full_meta, full_keys, ema):
    """Every key of the official full-size state_dict converts onto the native model (meta tensors)."""
    dtypes = {"float32": torch.float32, "int32": torch.int32}
    sd = OrderedDict(
        (e["key"], torch.empty(e["shape"], dtype=dtypes[e["dtype"]], device="meta"))
        for e in full_keys["keys"]
    )
    sd.update(official_buffers())  # the schedule is checked by value
    native = ck.convert_official_state_dict(sd, full_meta, ema=ema, source="full_keys.json")
    expected = {k: tuple(v.shape) for k, v in full_meta.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in native.items()} == expected
    # every official tensor was used exactly where the inverse mapping says
    names = ck.official_unet_names(full_meta)
    for nat, off in names.items():
        src = sd[ck.ema_key(off)] if ema else sd[off]
        assert native["unet." + nat] is src
    used = {id(v) for v in native.values()} | {id(v._base) for v in native.values() if v._base is not None}
    groups = ("model_ema.", "model.diffusion_model.") if ema else ("model.diffusion_model.",)
    for k, v in sd.items():
        if k.startswith((groups[0], "first_stage_model.", "cond_stage_model.")) and k not in ck.EMA_EXTRA:
            assert id(v) in used, k


# ---------------------------------------------------------------- tiny official checkpoint


def test_tiny_layout_matches_checkpoint(golden_model, tiny_sd):
    assert [(k, tuple(s)) for k, s in ck.official_layout(golden_model).items()] == [
        (k, tuple(v.shape)) for k, v in tiny_sd.items()
    ]
    counts = {k: _count(getattr(golden_model, k)) for k in FULL_COUNTS}
    assert counts == {"unet": 2_036_163, "vq": 2_695_294, "summarizer": 78_208}


def test_export_reproduces_official_checkpoint_exactly(golden_model, golden_ckpt, tiny_sd):
    live = ZoomLDM.from_official(golden_ckpt, config=golden_ckpt.parent / "zoomldm_tiny.yaml", ema=False)
    out = ck.to_official_state_dict(
        live, ema_unet_state=golden_model.unet.state_dict(), ema_decay=0.9999, ema_num_updates=123456
    )
    assert list(out) == list(tiny_sd)
    for k, v in tiny_sd.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k


def test_native_official_native_is_identity(golden_model):
    native = ck.convert_official_state_dict(ck.to_official_state_dict(golden_model), golden_model, ema=True)
    ref = golden_model.state_dict()
    assert set(native) == set(ref)
    for k, v in ref.items():
        assert torch.equal(native[k], v), k


# ---------------------------------------------------------------- errors


def _save(sd, path):
    torch.save(sd, path)
    return path


def _load_tiny(path, golden_dir, **kw):
    return ZoomLDM.from_official(path, config=golden_dir / "zoomldm_tiny.yaml", **kw)


def test_missing_unexpected_misshapen_keys_are_named(tiny_sd, golden_dir, tmp_path):
    sd = OrderedDict(tiny_sd)
    del sd["first_stage_model.quantize.embedding.weight"]
    sd["cond_stage_model.extra_head.weight"] = torch.zeros(3)
    sd["model.diffusion_model.out.2.bias"] = torch.zeros(5)
    with pytest.raises(ck.CheckpointError) as err:
        _load_tiny(_save(sd, tmp_path / "bad.ckpt"), golden_dir)
    msg = str(err.value)
    assert str(tmp_path / "bad.ckpt") in msg
    assert "missing keys (1): first_stage_model.quantize.embedding.weight" in msg
    assert "unexpected keys (1): cond_stage_model.extra_head.weight" in msg
    assert "misshapen keys (1): model.diffusion_model.out.2.bias (file [5], model [3])" in msg


def test_wrong_config_is_a_clear_error(golden_ckpt):
    with pytest.raises(ck.CheckpointError, match="misshapen keys") as err:
        ZoomLDM.from_official(golden_ckpt, config="zoomldm_brca")
    assert "Is the config right" in str(err.value)


def test_missing_ema_weights(tiny_sd, golden_dir, golden_io, tmp_path):
    sd = OrderedDict((k, v) for k, v in tiny_sd.items() if not k.startswith("model_ema."))
    path = _save(sd, tmp_path / "noema.ckpt")
    with pytest.raises(ck.CheckpointError, match="ema=False"):
        _load_tiny(path, golden_dir)
    live = _load_tiny(path, golden_dir, ema=False)
    with torch.no_grad():
        e = live.eps(golden_io["x_t_250"], golden_io["t_250"], golden_io["cond_unet"])
    assert (e - golden_io["eps_250_LIVE_weights_do_not_use"]).abs().max() <= 5e-5
    # one EMA tensor missing is named
    sd = OrderedDict(tiny_sd)
    del sd["model_ema.diffusion_modelout2weight"]
    with pytest.raises(ck.CheckpointError, match="missing keys \\(1\\): model_ema.diffusion_modelout2weight"):
        _load_tiny(_save(sd, tmp_path / "ema1.ckpt"), golden_dir)


def test_schedule_mismatch(tiny_sd, golden_dir, tmp_path):
    sd = OrderedDict(tiny_sd)
    sd["betas"] = sd["betas"] * 2
    with pytest.raises(ck.CheckpointError, match="schedule buffer 'betas'"):
        _load_tiny(_save(sd, tmp_path / "sched.ckpt"), golden_dir)


def test_pickled_objects_are_refused(tiny_sd, golden_dir, tmp_path):
    import argparse

    sd = dict(tiny_sd)
    sd["hparams"] = argparse.Namespace(lr=1.0)
    path = _save(sd, tmp_path / "pickled.ckpt")
    with pytest.raises(ck.CheckpointError, match="refusing to load.*argparse.Namespace.*never runs code"):
        _load_tiny(path, golden_dir)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(ck.CheckpointError, match="garbage.ckpt: not a readable torch checkpoint"):
        _load_tiny(garbage, golden_dir)
    _save({"a": torch.zeros(1), "epoch": 3}, tmp_path / "nt.ckpt")
    with pytest.raises(ck.CheckpointError, match="not tensors: epoch"):
        ck.load_state_dict_file(tmp_path / "nt.ckpt")
    with pytest.raises(ck.WeightsNotFoundError, match="checkpoint not found"):
        ck.load_state_dict_file(tmp_path / "nope.ckpt")


def test_wrapped_and_safetensors_checkpoints(golden_model, tiny_sd, golden_dir, tmp_path):
    from safetensors.torch import save_file

    wrapped = _save({"state_dict": tiny_sd, "epoch": 7, "global_step": 100}, tmp_path / "last.ckpt")
    st = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_sd.items()}, str(st))
    ref = golden_model.state_dict()
    for path in (wrapped, st):
        m = _load_tiny(path, golden_dir)
        assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())


# ---------------------------------------------------------------- configs


def test_official_and_native_configs_agree(golden_dir):
    name_o, arch_o = ck.read_config(golden_dir / "zoomldm_tiny.yaml")
    name_n, arch_n = ck.read_config("tiny")
    assert (name_o, name_n) == ("zoomldm_tiny", "tiny")
    assert arch_o == arch_n
    # official YAML written by save_official parses back to the same architecture
    _, back = ck.read_config(ck.official_config(arch_n))
    assert back == arch_n
    _, brca = ck.read_config("zoomldm_brca")
    assert brca["unet"]["use_fp16"] is True and brca["summarizer"]["input_channels"] == 1024
    assert yaml.safe_load(yaml.safe_dump(brca)) == brca  # plain data


def test_config_errors(golden_dir, tmp_path):
    with open(golden_dir / "zoomldm_tiny.yaml") as f:
        doc = yaml.safe_load(f)
    bad = json.loads(json.dumps(doc))
    bad["model"]["params"]["cond_stage_config"]["target"] = "ldm.modules.encoders.modules.ClassEmbedder"
    with pytest.raises(ValueError, match="cond_stage_config target"):
        ck.read_config(bad)
    bad = json.loads(json.dumps(doc))
    bad["model"]["params"]["unet_config"]["params"]["context_dim"] = 32
    with pytest.raises(
        ValueError, match="context_dim \\(32\\) must equal summarizer output_channels \\(64\\)"
    ):
        ck.read_config(bad)
    with pytest.raises(FileNotFoundError, match="no config 'nope' in conf/model/"):
        ck.read_config("nope")
    with pytest.raises(FileNotFoundError, match="model config not found"):
        ck.read_config(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- model hub


def test_parse_hub_id():
    assert ck.parse_hub_id("StonyBrook-CVLab/ZoomLDM") == ("StonyBrook-CVLab/ZoomLDM", "brca")
    assert ck.parse_hub_id("hf://StonyBrook-CVLab/ZoomLDM/other") == ("StonyBrook-CVLab/ZoomLDM", "other")
    assert ck.parse_hub_id("me/my-model") == ("me/my-model", None)
    assert ck.parse_hub_id("/abs/path") is None
    assert ck.parse_hub_id("./rel/path") is None
    assert ck.parse_hub_id("weights.ckpt") is None


def test_hub_offline_without_cache_says_how_to_pass_a_path(tmp_path):
    with pytest.raises(ck.WeightsNotFoundError) as err:
        ZoomLDM.from_pretrained("StonyBrook-CVLab/ZoomLDM", cache_dir=tmp_path)
    msg = str(err.value)
    assert "StonyBrook-CVLab/ZoomLDM/brca/config.yaml" in msg
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
