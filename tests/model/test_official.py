"""The official checkpoint layout <-> native modules: full-size key map, round trips, key errors."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

from zoomfeat.model import ZoomLDM
from zoomfeat.model import official as om
from zoomfeat.model.schedule import official_buffers
from zoomfeat.runtime.errors import WeightsError

from .conftest import UNET_DEPTH, load_tiny, save_sd, unet_fan_in
from .tolerances import f32_tol, max_abs

FULL_COUNTS = {"unet": 400_920_579, "vq": 55_322_782, "summarizer": 38_656_000}


@pytest.fixture(scope="module")
def full_keys(golden_dir):
    with open(golden_dir / "zoomldm_full_keys.json") as f:
        return json.load(f)


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
    mine = [(k, list(s)) for k, s in om.official_layout(full_meta).items()]
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
    native = om.convert_official_state_dict(sd, full_meta, ema=ema, source="full_keys.json")
    expected = {k: tuple(v.shape) for k, v in full_meta.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in native.items()} == expected
    # every official tensor was used exactly where the inverse mapping says
    names = om.official_unet_names(full_meta)
    for nat, off in names.items():
        src = sd[om.ema_key(off)] if ema else sd[off]
        assert native["unet." + nat] is src
    used = {id(v) for v in native.values()} | {id(v._base) for v in native.values() if v._base is not None}
    groups = ("model_ema.", "model.diffusion_model.") if ema else ("model.diffusion_model.",)
    for k, v in sd.items():
        if k.startswith((groups[0], "first_stage_model.", "cond_stage_model.")) and k not in om.EMA_EXTRA:
            assert id(v) in used, k


# ---------------------------------------------------------------- tiny official checkpoint


def test_tiny_layout_matches_checkpoint(golden_model, tiny_sd):
    assert [(k, tuple(s)) for k, s in om.official_layout(golden_model).items()] == [
        (k, tuple(v.shape)) for k, v in tiny_sd.items()
    ]
    counts = {k: _count(getattr(golden_model, k)) for k in FULL_COUNTS}
    assert counts == {"unet": 2_036_163, "vq": 2_695_294, "summarizer": 78_208}


def test_export_reproduces_official_checkpoint_exactly(golden_model, golden_ckpt, tiny_sd):
    live = ZoomLDM.from_official(golden_ckpt, config=golden_ckpt.parent / "zoomldm_tiny.yaml", ema=False)
    out = om.to_official_state_dict(
        live, ema_unet_state=golden_model.unet.state_dict(), ema_decay=0.9999, ema_num_updates=123456
    )
    assert list(out) == list(tiny_sd)
    for k, v in tiny_sd.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k


def test_native_official_native_is_identity(golden_model):
    native = om.convert_official_state_dict(om.to_official_state_dict(golden_model), golden_model, ema=True)
    ref = golden_model.state_dict()
    assert set(native) == set(ref)
    for k, v in ref.items():
        assert torch.equal(native[k], v), k


def test_missing_unexpected_misshapen_keys_are_named(tiny_sd, golden_dir, tmp_path):
    sd = OrderedDict(tiny_sd)
    del sd["first_stage_model.quantize.embedding.weight"]
    sd["cond_stage_model.extra_head.weight"] = torch.zeros(3)
    sd["model.diffusion_model.out.2.bias"] = torch.zeros(5)
    with pytest.raises(WeightsError) as err:
        load_tiny(save_sd(sd, tmp_path / "bad.ckpt"), golden_dir)
    msg = str(err.value)
    assert str(tmp_path / "bad.ckpt") in msg
    assert "missing keys (1): first_stage_model.quantize.embedding.weight" in msg
    assert "unexpected keys (1): cond_stage_model.extra_head.weight" in msg
    assert "misshapen keys (1): model.diffusion_model.out.2.bias (file [5], model [3])" in msg


def test_wrong_config_is_a_clear_error(golden_ckpt):
    with pytest.raises(WeightsError, match="misshapen keys") as err:
        ZoomLDM.from_official(golden_ckpt, config="zoomldm_brca")
    assert "Is the config right" in str(err.value)


def test_missing_ema_weights(tiny_sd, golden_dir, golden_io, tmp_path):
    sd = OrderedDict((k, v) for k, v in tiny_sd.items() if not k.startswith("model_ema."))
    path = save_sd(sd, tmp_path / "noema.ckpt")
    with pytest.raises(WeightsError, match="ema=False"):
        load_tiny(path, golden_dir)
    live = load_tiny(path, golden_dir, ema=False)
    with torch.no_grad():
        e = live.eps(golden_io["x_t_250"], golden_io["t_250"], golden_io["cond_unet"])
    ref = golden_io["eps_250_LIVE_weights_do_not_use"]
    # the full UNet's float32 bound (test_unet.py): n = 1152, D = 26
    assert max_abs(e, ref) <= f32_tol(ref, unet_fan_in(live), UNET_DEPTH)
    # one EMA tensor missing is named
    sd = OrderedDict(tiny_sd)
    del sd["model_ema.diffusion_modelout2weight"]
    with pytest.raises(WeightsError, match="missing keys \\(1\\): model_ema.diffusion_modelout2weight"):
        load_tiny(save_sd(sd, tmp_path / "ema1.ckpt"), golden_dir)


def test_schedule_mismatch(tiny_sd, golden_dir, tmp_path):
    sd = OrderedDict(tiny_sd)
    sd["betas"] = sd["betas"] * 2
    with pytest.raises(WeightsError, match="schedule buffer 'betas'"):
        load_tiny(save_sd(sd, tmp_path / "sched.ckpt"), golden_dir)
