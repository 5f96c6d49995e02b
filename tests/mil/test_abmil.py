"""zoomfeat.mil.abmil: the network is torchmil ABMIL behind fold standardisation (+ gated option)."""

import numpy as np
import torch

from zoomfeat.mil.abmil import Standardize, build_model, instance_stats
from zoomfeat.mil.config import MILConfig

from .bagfactory import in_memory_bagset, planted_bags


def test_model_is_torchmil_abmil_with_fold_standardisation_and_gated_option():
    from torchmil.models import ABMIL

    table, feats = planted_bags(n_cases=10, dim=6, seed=1)
    bags = in_memory_bagset(table, feats)
    mean, std = instance_stats(bags, np.arange(5))
    stacked = np.concatenate([feats[s] for s in bags.slide_ids[:5]]).astype(np.float16).astype(np.float64)
    # Both sides sum the same float16 values in float64 (order-dependent error ~ n * 2^-53 * |x|, ~1e-14
    # here); instance_stats then rounds to float32: relative error <= 2^-24. rtol 2^-23 covers both.
    np.testing.assert_allclose(mean, stacked.mean(0), rtol=2**-23, atol=1e-12)
    np.testing.assert_allclose(std, stacked.std(0), rtol=2**-23, atol=1e-12)
    model = build_model(6, MILConfig(hidden=[8], gated=True), mean=mean, std=std)
    assert isinstance(model, ABMIL) and model.pool.gated and hasattr(model.pool, "fc_gated")
    assert isinstance(model.feat_ext[0], Standardize)
    np.testing.assert_allclose(model.feat_ext[0].mean.numpy(), mean)
    plain = build_model(6, MILConfig(hidden=[], standardize=False))
    assert not plain.pool.gated
    logits, att = plain(torch.randn(1, 7, 6), return_att=True)
    assert logits.shape == (1,) and att.shape == (1, 7)
