"""The Conditioning Diffusion Model against the official ``cdm_dit`` (golden G7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomfeat.generation.cdm import DiT, load_cdm, sincos_1d
from zoomfeat.generation.cdm_diffusion import CDMDiffusion, cosine_betas, space_timesteps
from zoomfeat.generation.cdm_training import sample_contexts
from zoomfeat.generation.costs import Tracker
from zoomfeat.model.callbacks import Recorder
from zoomfeat.runtime.errors import ConfigError, WeightsError

TINY = dict(in_channels=64, hidden_size=64, depth=2, num_heads=4, num_classes=8)


@pytest.fixture(scope="module")
def tiny_dit(gen_golden):
    sd = {k.removeprefix("g7_dit."): v for k, v in gen_golden.items() if k.startswith("g7_dit.")}
    m = DiT(**TINY)
    m.load_state_dict(sd)
    return m.eval(), sd


def test_architecture_and_init(tiny_dit):
    model, sd = tiny_dit
    assert sum(v.numel() for v in sd.values()) == 195_456  # golden README
    fresh = DiT(**TINY)
    # pos_embed is the fixed 1-D sin-cos table (float64 maths cast once): exact
    assert torch.equal(fresh.pos_embed.data, sd["pos_embed"])
    assert np.allclose(sincos_1d(4, 2)[1], [np.sin(1), np.sin(1e-2), np.cos(1), np.cos(1e-2)])
    # adaLN-Zero: a fresh model outputs 0
    out = fresh(torch.randn(2, 64, 65), torch.tensor([3, 900]), torch.tensor([0, 7]))
    assert out.shape == (2, 128, 65) and out.abs().max() == 0


@pytest.mark.parametrize(
    "variant,params", [("S", 33_081_088), ("B", 130_746_880), ("L", 458_415_104), ("XL", 675_480_832)]
)
def test_variant_parameter_counts(variant, params):
    with torch.device("meta"):
        m = DiT.variant(variant)
    assert sum(p.numel() for p in m.parameters()) == params  # docs/generation.md "CDM" (pos_embed included)


def test_schedule_and_respacing(gen_golden):
    # float64 NumPy in both codes: 1e-12 (README); timestep maps exact
    assert np.abs(cosine_betas() - gen_golden["g7_betas_1000"].numpy()).max() <= 1e-12
    for r in (5, 200):
        d = CDMDiffusion(respacing=r)
        assert d.timestep_map.tolist() == gen_golden[f"g7_timestep_map_{r}"].tolist()
        assert np.abs(d.betas - gen_golden[f"g7_betas_respaced_{r}"].numpy()).max() <= 1e-12
    assert space_timesteps(1000, 4) == [0, 333, 666, 999]


def test_dit_forward_and_training_losses(gen_golden, tiny_dit):
    model, _ = tiny_dit
    with torch.no_grad():
        out = model(gen_golden["g7_x0"], torch.tensor([0.0, 637.0]), gen_golden["g7_y"])
        # |out| <= 1.7 after 2 blocks: float32 rounding ~1e-7 relative (observed 3.6e-7); 1e-5 (README)
        assert (out - gen_golden["g7_dit_out_x0_t0_637"]).abs().max() <= 1e-5
        d = CDMDiffusion()
        for s in "ab":
            o = d.training_losses(
                model,
                gen_golden["g7_x0"],
                t=gen_golden[f"g7_train_t_{s}"],
                y=gen_golden["g7_y"],
                noise=gen_golden[f"g7_train_noise_{s}"],
            )
            assert (o["x_t"] - gen_golden[f"g7_train_xt_{s}"]).abs().max() <= 1e-5
            assert (o["model_output"] - gen_golden[f"g7_train_dit_out_{s}"]).abs().max() <= 1e-5
            for k in ("loss", "mse", "vb"):
                ref = gen_golden[f"g7_train_{k}_{s}"]
                # relative 1e-5 of the tensor's max (README); the t = 0 NLL is 39 bits
                assert (o[k] - ref).abs().max() <= 1e-5 * ref.abs().max(), k


def test_ddim_sample(gen_golden, tiny_dit):
    model, _ = tiny_dit
    rec = Recorder()
    tr = Tracker()
    x = CDMDiffusion(respacing=5).ddim_sample(
        model, gen_golden["g7_ddim5_z"], y=gen_golden["g7_ddim5_y"], tracker=tr, callback=rec
    )
    assert tr.counts.dit == 2 * 5  # one DiT call per respaced step and sample
    assert [(r.step, r.t) for r in rec.records] == [(0, 4), (1, 3), (2, 2), (3, 1), (4, 0)]
    assert (torch.stack(rec.get("cdm", "x_in")) - gen_golden["g7_ddim5_x_in"]).abs().max() <= 1e-5
    assert (torch.stack(rec.get("cdm", "model_output")) - gen_golden["g7_ddim5_dit_out"]).abs().max() <= 1e-5
    assert rec.records[-1].state.latents is x
    assert (x - gen_golden["g7_ddim5_sample"]).abs().max() <= 1e-5


def test_cdm_sample_conditions_the_ldm(gen_golden, tiny_ema):
    """A CDM sample is the UNet context directly (cdm_measure_fid glue): PLMS S=5, s=1.75."""
    ctx = gen_golden["g7_ddim5_sample"][:1].transpose(1, 2)
    x = tiny_ema.sample(ctx, steps=5, guidance=1.75, sampler="plms", x_T=gen_golden["g7_plms_x_T"][:1])
    # |x| reaches 66 (random tiny model); 6 UNet calls, each ~1e-6 relative, compounded by PLMS:
    # 1e-3 absolute (README); observed 2.7e-5 on both samples
    assert (x - gen_golden["g7_plms_sample"][:1]).abs().max() <= 1e-3


def test_load_bare_and_ema_checkpoints(tmp_path, tiny_dit):
    from safetensors.torch import save_file

    model, sd = tiny_dit
    save_file(sd, str(tmp_path / "bare.safetensors"))
    torch.save(
        {"model": {k: v * 0 for k, v in sd.items()}, "ema": sd, "args": {"lr": 1e-4}}, tmp_path / "ckpt.pt"
    )
    x, t, y = torch.randn(1, 64, 65), torch.tensor([10]), torch.tensor([2])
    ref = model(x, t, y)
    for name in ("bare.safetensors", "ckpt.pt"):
        m = load_cdm(tmp_path / name, None, in_channels=64, hidden_size=64, depth=2, num_heads=4)
        assert torch.equal(m(x, t, y), ref)  # "ema" preferred over "model"
    with pytest.raises(WeightsError, match="DiT-B"):
        load_cdm(tmp_path / "bare.safetensors", "B", in_channels=64)


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_loading_never_runs_pickled_code(tmp_path):
    torch.save({"ema": {"w": torch.zeros(1)}, "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError):
        load_cdm(tmp_path / "evil.pt", None, in_channels=64, hidden_size=64, depth=2, num_heads=4)


def test_sample_contexts_shape_and_errors(tiny_dit):
    model, _ = tiny_dit
    ctx = sample_contexts(model, mag=3, n=2, respacing=4, generator=torch.Generator().manual_seed(0))
    assert ctx.shape == (2, 65, 64)
    with pytest.raises(ConfigError):
        sample_contexts(model, mag=9, n=1)
    with pytest.raises(ConfigError):
        DiT.variant("XXL")
