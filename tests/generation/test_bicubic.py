"""The MATLAB-style resizer against the official ``Resizer`` (golden G1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoomfeat.generation.bicubic import Resizer, cubic, imresize
from zoomfeat.runtime.errors import ConfigError

CASES = {"down2": 0.5, "down4": 0.25, "up2": 2.0, "up4": 4.0}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_official_resizer(gen_golden, case):
    x = gen_golden[f"g1_{case}_in"]
    r = Resizer(x.shape, CASES[case])
    for k in (0, 1):
        # Tap indices are integers: exact. Weights are float64 maths cast to float32 in both
        # codes: identical unless the float64 values differ, so 1e-7 (one float32 ulp at 1).
        assert torch.equal(r.field_of_view[k], gen_golden[f"g1_{case}_fov{k}"])
        assert torch.allclose(r.weights[k], gen_golden[f"g1_{case}_weights{k}"], rtol=0, atol=1e-7)
    # Output: a sum of <= 16 products per dim, two dims, |x| <= 4.8 and sum|w| <= ~1.3: float32
    # rounding <= 2 * 16 * 4.8 * 1.3 * 6e-8 ~ 1.2e-5 worst case, ~1e-7 typical (observed 3.6e-7).
    # Bound 1e-6 (the golden README's) holds with the summation order kept (gather, sum over taps).
    assert (r(x) - gen_golden[f"g1_{case}_out"]).abs().max() <= 1e-6


def test_batch_and_channels_are_independent(gen_golden):
    x = gen_golden["g1_down4_in"]
    batch = torch.cat([x, 2 * x, -x]).repeat(1, 3, 1, 1)  # [3, 3, 256, 256]
    out = imresize(batch, 0.25)
    assert out.shape == (3, 3, 64, 64)
    assert torch.allclose(out[0, 1:2], imresize(x, 0.25)[0], atol=1e-6)
    assert torch.allclose(out[1], 2 * out[0], atol=1e-5)


def test_is_not_torch_bicubic(gen_golden):
    x = gen_golden["g1_down2_in"]
    ours = imresize(x, 0.5)
    torch_ = F.interpolate(x, scale_factor=0.5, mode="bicubic", antialias=True)
    assert (ours - torch_).abs().max() > 0.05  # the reason to port it (README G1: 0.32-0.37)


def test_kernel_and_errors():
    assert cubic(torch.tensor([0.0, 1.0, 2.0, 0.5]).numpy()).tolist() == [1.0, 0.0, 0.0, 0.5625]
    with pytest.raises(ConfigError):
        Resizer((1, 3, 64, 64), 0)
    with pytest.raises(ValueError):
        Resizer((1, 3, 64, 64), 2)(torch.zeros(1, 3, 32, 32))
