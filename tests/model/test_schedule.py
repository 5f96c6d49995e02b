"""LDM linear schedule and q_sample against the official buffers and x_t."""

from __future__ import annotations

import pytest
import torch

from zoomfeat.model.schedule import OFFICIAL_BUFFERS, Schedule, make_betas, official_buffers

from .tolerances import f32_tol


def test_buffers_bitwise_equal_to_official_checkpoint(golden_ckpt):
    sd = torch.load(golden_ckpt, map_location="cpu", weights_only=True)
    mine = official_buffers()
    assert list(mine) == list(OFFICIAL_BUFFERS) == list(sd)[:12]
    for name, t in mine.items():
        assert t.dtype == torch.float32 and t.shape == (1000,)
        assert torch.equal(t, sd[name]), name


def test_schedule_values(golden_io):
    ac = official_buffers()["alphas_cumprod"]
    assert torch.equal(ac, golden_io["alphas_cumprod"])
    assert torch.equal(official_buffers()["betas"], golden_io["betas"])
    ac64 = torch.cumprod(1 - make_betas(), 0)
    assert (ac64 - golden_io["alphas_cumprod_f64"]).abs().max() < 1e-15
    # float32 storage of float64 values in (0, 1]: round to nearest, at most half an ulp = 2**-25 < 3e-8
    assert (ac.double() - ac64).abs().max() < 3e-8
    assert abs(ac[0].item() - 0.9985) < 1e-6
    assert abs(ac[250].item() - 0.50842) < 1e-5
    assert abs(ac[999].item() - 1.4230e-4) < 1e-8


@pytest.mark.parametrize("t", [0, 250, 999])
def test_q_sample_reproduces_official_x_t(golden_io, t):
    s = Schedule()
    x_t = s.q_sample(golden_io["z0"], golden_io[f"t_{t}"], golden_io["noise"])
    ref = golden_io[f"x_t_{t}"]
    # a * x0 + b * noise: n = 2 products, one block -> 2 * eps32 * max|x_t| * sqrt(2) (about 1.5e-6)
    assert (x_t - ref).abs().max().item() <= f32_tol(ref, fan_in=2)
    assert torch.equal(x_t, ref)  # the official arithmetic, bitwise


def test_q_sample_int_timestep_broadcasts(golden_io):
    s = Schedule()
    assert torch.equal(s.q_sample(golden_io["z0"], 250, golden_io["noise"]), golden_io["x_t_250"])


def test_bad_timesteps_and_options():
    s = Schedule()
    z = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        s.q_sample(z, 1000, z)
    with pytest.raises(ValueError, match="batch"):
        s.q_sample(z, torch.tensor([1, 2, 3]), z)
    with pytest.raises(TypeError):
        s.q_sample(z, 2.5, z)
    with pytest.raises(ValueError, match="noise shape"):
        s.q_sample(z, 3, torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="eps"):
        Schedule(parameterization="v")
    with pytest.raises(ValueError, match="linear"):
        make_betas(beta_schedule="cosine")
