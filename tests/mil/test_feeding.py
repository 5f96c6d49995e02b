"""zoomfeat.mil.feeding: padded batches give the single-bag logits; bf16 autocast only where native."""

import torch

from zoomfeat.mil.abmil import build_model
from zoomfeat.mil.config import MILConfig
from zoomfeat.mil.feeding import amp_precision, pad_batch


def test_padded_batches_match_single_bags():
    torch.manual_seed(0)
    model = build_model(5, MILConfig(hidden=[8], dropout=0.0)).eval()
    xs = [torch.randn(3, 5), torch.randn(6, 5)]
    X, mask = pad_batch(xs)
    with torch.no_grad():
        batched = model(X, mask)
        single = torch.stack([model(x.unsqueeze(0))[0] for x in xs])
    # Same maths, different reduction order (padded rows add exact zeros after masking): float32
    # rounding of sums of <= 8 terms of magnitude <= ~1 is <= 8 * 2^-24 * ~1 ~ 5e-7 per layer, a
    # few layers deep ~ 2e-6; 1e-5 is ~5x that bound.
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_only_where_native():
    from zoomfeat.runtime.device import cpu_has_native_bf16

    cpu = torch.device("cpu")
    assert amp_precision(cpu, False) == "fp32"
    assert amp_precision(cpu, True) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert amp_precision(torch.device("cuda"), True) == "bf16"
    assert amp_precision(torch.device("mps"), True) == "fp32"
