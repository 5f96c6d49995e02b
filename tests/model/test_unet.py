"""UNet (diffusers UNet2DConditionModel): eps, every official block, time embedding, early-stopping taps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zoomfeat.model import unet as unet_mod

from .conftest import UNET_DEPTH, unet_fan_in
from .tolerances import f32_tol, max_abs, widest_fan_in


def block_tolerance(model, io, name: str) -> float:
    """Bound for official block ``name`` (block i of the execution order, depth D = i + 1).

    n: the widest dot product in blocks 0..i (their convs, Linears, attention widths, and the
    tokens attended by their self-attentions) and in the time embedding feeding every ResBlock.
    """
    names = model.block_names
    upto = names[: names.index(name) + 1]
    modules = [model.unet.time_embedding] + [model.unet.get_submodule(BLOCK_TO_DIFFUSERS[n]) for n in upto]
    tokens = max(
        (
            io[f"hook.{n}"][0, 0].numel()
            for n in upto
            if "attentions" in BLOCK_TO_DIFFUSERS[n] or n == "middle_block"
        ),
        default=0,
    )
    return f32_tol(io[f"hook.{name}"], widest_fan_in(*modules, tokens=tokens), depth=len(upto))


@pytest.mark.parametrize("t", [0, 250, 999])
def test_eps_matches_official_ema(golden_model, golden_io, t):
    with torch.no_grad():
        e = golden_model.eps(golden_io[f"x_t_{t}"], golden_io[f"t_{t}"], golden_io["cond_unet"])
    assert e.shape == (2, 3, 64, 64)
    # full UNet: n = 1152, D = 26 -> 2 * eps32 * max|eps| * sqrt(1152 * 26) = 4.1e-5 * max|eps|
    # (t=0: max|eps| 4.7 -> 1.9e-4; measured 7e-6 against float32, 1e-5 against float64)
    tol = f32_tol(golden_io[f"eps_{t}"], unet_fan_in(golden_model), UNET_DEPTH)
    assert max_abs(e, golden_io[f"eps_{t}"]) <= tol
    assert max_abs(e, golden_io[f"eps_{t}_f64"]) <= tol  # float64 reference: only our side rounds
    # and clearly not the live-weight output
    if t == 250:
        assert max_abs(e, golden_io["eps_250_LIVE_weights_do_not_use"]) > 0.5


def test_every_block_matches_official_hooks(golden_model, golden_io):
    names = golden_model.block_names
    assert len(names) == 25
    with torch.no_grad():
        out = golden_model.taps(golden_io["x_t_250"], golden_io["t_250"], golden_io["cond_unet"], names)
    out = {n: v[:1] for n, v in out.items()}
    assert list(out) == names
    for n in names:
        ref = golden_io[f"hook.{n}"]
        assert out[n].shape == ref.shape, n
        # block i: n = widest dot product so far, D = i + 1 (e.g. input_blocks.2: n = 288
        # (32 ch * 3 * 3), D = 3, max|ref| 3.6 -> 2.6e-5; middle_block: n = 1024, D = 13 -> 1.3e-4)
        assert max_abs(out[n], ref) <= block_tolerance(golden_model, golden_io, n), n


def test_golden_bound_catches_a_perturbed_weight(golden_model, golden_io):
    """The bounds above are loose enough for any CPU and tight enough for a real error: one weight
    tensor scaled by 1 + 1e-3 (a wrong weight is off by far more) breaks them."""
    x, t, c = golden_io["x_t_250"], golden_io["t_250"], golden_io["cond_unet"]
    cases = {
        "conv_in.weight": "input_blocks.0",  # the first layer: every block and eps move
        "down_blocks.0.resnets.1.conv2.weight": "input_blocks.2",  # inside the AMD-EPYC block
    }
    for param, block in cases.items():
        weight = golden_model.unet.get_parameter(param)
        saved = weight.detach().clone()
        try:
            with torch.no_grad():
                weight.mul_(1 + 1e-3)
                e = golden_model.eps(x, t, c)
                tap = golden_model.taps(x, t, c, [block])[block][:1]
        finally:
            with torch.no_grad():
                weight.copy_(saved)
        eps_tol = f32_tol(golden_io["eps_250"], unet_fan_in(golden_model), UNET_DEPTH)
        assert max_abs(e, golden_io["eps_250"]) > 10 * eps_tol, param
        assert max_abs(tap, golden_io[f"hook.{block}"]) > 10 * block_tolerance(
            golden_model, golden_io, block
        ), param
    with torch.no_grad():  # restored: back within the bound
        e = golden_model.eps(x, t, c)
    assert max_abs(e, golden_io["eps_250"]) <= f32_tol(
        golden_io["eps_250"], unet_fan_in(golden_model), UNET_DEPTH
    )


def test_time_embedding(golden_model, golden_io):
    x = golden_io["x_t_250"]
    with torch.no_grad():
        sin, emb = unet_mod.time_embedding(golden_model.unet, x, golden_io["t_250"])
    assert sin.shape == (2, 32) and emb.shape == (2, 128)
    assert torch.equal(sin[:1], golden_io["hook.t_emb_sinusoidal"])  # [cos | sin], float32, bitwise
    # Linear(32->128), SiLU, Linear(128->128): n = 128, D = 2 -> 2 * eps32 * 0.33 * 16 ≈ 1.3e-6
    tol = f32_tol(golden_io["hook.time_embed"], widest_fan_in(golden_model.unet.time_embedding), depth=2)
    assert max_abs(emb[:1], golden_io["hook.time_embed"]) <= tol


BLOCK_TO_DIFFUSERS = {
    "input_blocks.0": "conv_in",
    "input_blocks.1": "down_blocks.0.resnets.0",
    "input_blocks.2": "down_blocks.0.resnets.1",
    "input_blocks.3": "down_blocks.0.downsamplers.0",
    "input_blocks.4": "down_blocks.1.attentions.0",
    "input_blocks.5": "down_blocks.1.attentions.1",
    "input_blocks.6": "down_blocks.1.downsamplers.0",
    "input_blocks.7": "down_blocks.2.attentions.0",
    "input_blocks.8": "down_blocks.2.attentions.1",
    "input_blocks.9": "down_blocks.2.downsamplers.0",
    "input_blocks.10": "down_blocks.3.attentions.0",
    "input_blocks.11": "down_blocks.3.attentions.1",
    "middle_block": "mid_block",
    "output_blocks.0": "up_blocks.0.attentions.0",
    "output_blocks.1": "up_blocks.0.attentions.1",
    "output_blocks.2": "up_blocks.0.upsamplers.0",
    "output_blocks.3": "up_blocks.1.attentions.0",
    "output_blocks.4": "up_blocks.1.attentions.1",
    "output_blocks.5": "up_blocks.1.upsamplers.0",
    "output_blocks.6": "up_blocks.2.attentions.0",
    "output_blocks.7": "up_blocks.2.attentions.1",
    "output_blocks.8": "up_blocks.2.upsamplers.0",
    "output_blocks.9": "up_blocks.3.resnets.0",
    "output_blocks.10": "up_blocks.3.resnets.1",
    "output_blocks.11": "up_blocks.3.resnets.2",
}


def test_taps_equal_diffusers_forward_hooks(golden_model, golden_io):
    """The block-by-block forward runs exactly what UNet2DConditionModel.forward runs."""
    unet = golden_model.unet
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, path in BLOCK_TO_DIFFUSERS.items():

        def hook(_m, _inp, out, name=name):
            seen[name] = out[0] if isinstance(out, tuple) else out

        handles.append(unet.get_submodule(path).register_forward_hook(hook))
    x, t, c = golden_io["x_t_999"], golden_io["t_999"], golden_io["cond_unet"]
    try:
        with torch.no_grad():
            golden_model.eps(x, t, c)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        taps = golden_model.taps(x, t, c, list(BLOCK_TO_DIFFUSERS))
    for name in BLOCK_TO_DIFFUSERS:
        assert torch.equal(taps[name], seen[name]), name


def test_iter_blocks_yields_every_official_block_in_order(golden_model, golden_io):
    x, t, c = golden_io["x_t_999"][:1], golden_io["t_999"][:1], golden_io["cond_unet"][:1]
    with torch.no_grad():
        _, emb = unet_mod.time_embedding(golden_model.unet, x, t)
        names = [name for name, _ in unet_mod.iter_blocks(golden_model.unet, x, emb, c)]
    assert names == golden_model.block_names


def test_forward_stops_after_deepest_tap(golden_model, golden_io):
    unet = golden_model.unet
    calls: list[str] = []
    watched = (
        "down_blocks.3.resnets.0",
        "mid_block",
        "up_blocks.0.resnets.0",
        "up_blocks.1.resnets.0",
        "up_blocks.2.resnets.0",
        "up_blocks.3.resnets.0",
        "conv_out",
    )
    handles = [unet.get_submodule(p).register_forward_hook(lambda *_a, p=p: calls.append(p)) for p in watched]
    x, t, c = golden_io["x_t_250"], golden_io["t_250"], golden_io["cond_unet"]
    try:
        with torch.no_grad():
            out = golden_model.taps(x, t, c, ["middle_block", "input_blocks.4"])
            assert list(out) == ["middle_block", "input_blocks.4"]
            assert calls == ["down_blocks.3.resnets.0", "mid_block"]
            calls.clear()
            golden_model.taps(x, t, c, ["input_blocks.5"])
            assert calls == []  # not even the level-3 down block
            calls.clear()
            golden_model.taps(x, t, c, ["output_blocks.4", "middle_block"])
            assert calls == [
                "down_blocks.3.resnets.0",
                "mid_block",
                "up_blocks.0.resnets.0",
                "up_blocks.1.resnets.0",
            ]
            calls.clear()
            golden_model.eps(x, t, c)
            assert calls == list(watched)
    finally:
        for h in handles:
            h.remove()
    # and it costs less: FLOPs of the stopped forward vs the full one
    with torch.no_grad():
        with FlopCounterMode(display=False) as full:
            golden_model.eps(x, t, c)
        with FlopCounterMode(display=False) as mid:
            golden_model.taps(x, t, c, ["middle_block"])
        with FlopCounterMode(display=False) as early:
            golden_model.taps(x, t, c, ["input_blocks.3"])
    # tiny model: 3.85 GFLOPs full, 1.21 to middle_block, 0.66 to input_blocks.3
    assert early.get_total_flops() < 0.6 * mid.get_total_flops() < 0.4 * full.get_total_flops()


def test_tap_channels(golden_model, golden_io, full_meta):
    names = golden_model.block_names
    ch = golden_model.tap_channels(names)
    for n in names:
        assert ch[n] == golden_io[f"hook.{n}"].shape[1], n
    assert golden_model.tap_channels() == {"middle_block": 64, "output_blocks.4": 32}
    # full size: shapes from a meta-device forward (nothing computed, nothing allocated)
    x = torch.empty(2, 3, 64, 64, device="meta")
    c = torch.empty(2, 65, 512, device="meta")
    out = full_meta.taps(x, 200, c, full_meta.block_names)
    full_ch = full_meta.tap_channels(full_meta.block_names)
    assert {n: v.shape[1] for n, v in out.items()} == full_ch
    assert full_ch["middle_block"] == 960 and full_ch["output_blocks.4"] == 576
    assert out["output_blocks.4"].shape == (2, 576, 16, 16)


def test_bad_tap_names_and_inputs(golden_model):
    x, c = torch.zeros(1, 3, 64, 64), torch.zeros(1, 65, 64)
    with pytest.raises(ValueError, match=r"unknown tap name.*output_blocks\.12.*valid names"):
        golden_model.taps(x, 1, c, ["output_blocks.12"])
    with pytest.raises(ValueError, match="unknown tap name"):
        golden_model.tap_channels(["mid_block"])
    with pytest.raises(ValueError, match="no tap names"):
        golden_model.taps(x, 1, c, [])
    with pytest.raises(ValueError, match=r"context must be \[B, tokens, 64\]"):
        golden_model.eps(x, 1, torch.zeros(1, 65, 512))
    with pytest.raises(ValueError, match="x_t must be"):
        golden_model.eps(torch.zeros(1, 4, 64, 64), 1, c)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        golden_model.eps(x, -1, c)


def test_channels_last_and_autocast(golden_model, golden_io):
    """channels_last weights/inputs and bf16 autocast run (CPU here; the same code path on CUDA).

    Kept to the first half of the UNet: every new conv layout costs a one-off oneDNN set-up on CPU.
    """
    m = copy.deepcopy(golden_model).to(memory_format=torch.channels_last)
    assert m.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, c = golden_io["x_t_250"][:1], golden_io["t_250"][:1], golden_io["cond_unet"][:1]
    with torch.no_grad():
        taps = m.taps(x, t, c, ["input_blocks.0", "output_blocks.4"])
        assert taps["input_blocks.0"].is_contiguous(memory_format=torch.channels_last)
        # channels_last runs other conv kernels: the same rounding bound as the block test
        bound = block_tolerance(golden_model, golden_io, "output_blocks.4")
        assert max_abs(taps["output_blocks.4"], golden_io["hook.output_blocks.4"]) <= bound
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tb = golden_model.taps(x, t, c, ["input_blocks.5"])["input_blocks.5"]
    assert tb.dtype == torch.bfloat16
    ref = golden_io["hook.input_blocks.5"]
    assert torch.corrcoef(torch.stack([tb.float().flatten(), ref.flatten()]))[0, 1] > 0.99


def test_unet_config_checks():
    with pytest.raises(ValueError, match="unsupported UNet config keys"):
        unet_mod.normalize_unet_config({"model_channels": 32, "frobnicate": True})
    with pytest.raises(ValueError, match="resblock_updown"):
        unet_mod.normalize_unet_config({"resblock_updown": True})
    cfg = unet_mod.normalize_unet_config(
        {
            "model_channels": 32,
            "channel_mult": [1, 1, 1, 2],
            "context_dim": 64,
            "ckpt_path": "models/ldm_imgnet_unet.ckpt",
            "use_checkpoint": True,
        }
    )
    d = unet_mod.diffusers_config(cfg)
    assert d["down_block_types"] == ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3
    assert d["up_block_types"] == ["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"]
    assert d["attention_head_dim"] == 1 and d["block_out_channels"] == [32, 32, 32, 64]
