import numpy as np
import pandas as pd
import pytest
import torch

from zoomfeat.mil.bagset import BagSet
from zoomfeat.mil.config import MILConfig
from zoomfeat.mil.metrics import binary_metrics
from zoomfeat.mil.splits import fold_keys, fold_parts, make_splits
from zoomfeat.mil.train import (
    BagFeeder,
    Standardize,
    build_model,
    class_weights,
    instance_stats,
    predict,
    train_fold,
)

from .bagfactory import planted_bags

FAST = MILConfig(
    hidden=[32],
    att_dim=16,
    dropout=0.1,
    lr=2e-3,
    weight_decay=1e-4,
    epochs=25,
    patience=8,
    min_epochs=5,
    warmup=0,
)


def _bagset(table: pd.DataFrame, feats: dict, labels=None) -> BagSet:
    slides = table["slide_id"].tolist()
    y = np.asarray(labels if labels is not None else (table["label"] == "ILC").astype(int), dtype=np.int64)
    return BagSet(
        feature_set="synthetic",
        source=None,
        slide_ids=slides,
        case_ids=table["case_id"].tolist(),
        labels=y,
        dim=next(iter(feats.values())).shape[1],
        n_instances=np.asarray([len(feats[s]) for s in slides]),
        bags=[feats[s].astype(np.float16) for s in slides],
        coords=[None] * len(slides),
    )


def _cv_predictions(bags: BagSet, cfg: MILConfig, folds=4, seed=0):
    """Pooled out-of-fold probabilities of a patient-level CV."""
    splits = make_splits(bags.slide_ids, bags.case_ids, bags.labels, folds=folds, seed=seed)
    probs = np.full(len(bags), np.nan)
    feeder = BagFeeder(bags, torch.device("cpu"))
    for repeat, fold in fold_keys(splits):
        parts = fold_parts(splits, repeat, fold)
        tr, va, te = (bags.index(parts[p]) for p in ("train", "val", "test"))
        result = train_fold(bags, tr, va, cfg, seed=fold, device="cpu", progress=False)
        probs[te], _ = predict(result.model, feeder, te)
    return probs


def test_learns_a_planted_signal_and_stays_at_chance_on_shuffled_labels():
    torch.set_num_threads(1)
    table, feats = planted_bags(n_cases=80, dim=16, seed=0, signal=2.5)
    bags = _bagset(table, feats)
    auc = binary_metrics(bags.labels, _cv_predictions(bags, FAST))["auc"]
    assert auc > 0.9, auc
    shuffled = np.random.default_rng(5).permutation(bags.labels)
    null = _bagset(table, feats, labels=shuffled)
    null_auc = binary_metrics(null.labels, _cv_predictions(null, FAST))["auc"]
    assert abs(null_auc - 0.5) < 0.2, null_auc


def test_training_is_deterministic_for_a_seed():
    table, feats = planted_bags(n_cases=20, dim=8, seed=2)
    bags = _bagset(table, feats)
    idx = np.arange(len(bags))
    cfg = MILConfig(hidden=[16], att_dim=8, epochs=4, patience=10, min_epochs=1, warmup=0)
    feeder = BagFeeder(bags, torch.device("cpu"))
    runs = [
        predict(
            train_fold(bags, idx[:14], idx[14:17], cfg, seed=s, device="cpu", progress=False).model,
            feeder,
            idx[17:],
        )[0]
        for s in (3, 3, 4)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_model_is_torchmil_abmil_with_fold_standardisation_and_gated_option():
    from torchmil.models import ABMIL

    table, feats = planted_bags(n_cases=10, dim=6, seed=1)
    bags = _bagset(table, feats)
    mean, std = instance_stats(bags, np.arange(5))
    stacked = np.concatenate([feats[s] for s in bags.slide_ids[:5]]).astype(np.float16).astype(np.float64)
    # Both sides sum the same float16 values in float64 (order-dependent error ~ n * 2^-53 * |x|, ~1e-14
    # here); instance_stats then rounds to float32: relative error <= 2^-24. rtol 2^-23 covers both.
    np.testing.assert_allclose(mean, stacked.mean(0), rtol=2**-23, atol=1e-12)
    np.testing.assert_allclose(std, stacked.std(0), rtol=2**-23, atol=1e-12)
    model = build_model(6, MILConfig(hidden=[8], gated=True), mean, std)
    assert isinstance(model, ABMIL) and model.pool.gated and hasattr(model.pool, "fc_gated")
    assert isinstance(model.feat_ext[0], Standardize)
    np.testing.assert_allclose(model.feat_ext[0].mean.numpy(), mean)
    plain = build_model(6, MILConfig(hidden=[], standardize=False))
    assert not plain.pool.gated
    logits, att = plain(torch.randn(1, 7, 6), return_att=True)
    assert logits.shape == (1,) and att.shape == (1, 7)


def test_padded_batches_match_single_bags():
    from zoomfeat.mil.train import _batch

    torch.manual_seed(0)
    model = build_model(5, MILConfig(hidden=[8], dropout=0.0)).eval()
    xs = [torch.randn(3, 5), torch.randn(6, 5)]
    X, mask = _batch(xs)
    with torch.no_grad():
        batched = model(X, mask)
        single = torch.stack([model(x.unsqueeze(0))[0] for x in xs])
    # Same maths, different reduction order (padded rows add exact zeros after masking): float32
    # rounding of sums of <= 8 terms of magnitude <= ~1 is <= 8 * 2^-24 * ~1 ~ 5e-7 per layer, a
    # few layers deep ~ 2e-6; 1e-5 is ~5x that bound.
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    # batch_size > 1 trains end to end
    table, feats = planted_bags(n_cases=12, dim=5, seed=4)
    bags = _bagset(table, feats)
    result = train_fold(
        bags,
        np.arange(8),
        np.arange(8, 12),
        MILConfig(hidden=[8], epochs=2, batch_size=4, max_instances=5, warmup=0),
        device="cpu",
        progress=False,
    )
    assert len(result.history) == 2 and {"train_loss", "val_auc", "val_loss"} <= set(result.history[0])


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0, 0, 0, 1]))
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    assert (w * np.array([3, 1])).tolist() == pytest.approx([2.0, 2.0])  # each class carries half
    assert class_weights(np.array([0, 0, 1]), balanced=False).tolist() == [1.0, 1.0]


def test_cuda_request_without_cuda_is_clear():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from zoomfeat.runtime.errors import ConfigError

    table, feats = planted_bags(n_cases=4, dim=3, seed=0)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train_fold(_bagset(table, feats), [0, 1], [], MILConfig(hidden=[4]), device="cuda", progress=False)


def test_bf16_autocast_only_where_native():
    from zoomfeat.mil.train import amp_precision
    from zoomfeat.runtime.device import cpu_has_native_bf16

    cpu = torch.device("cpu")
    assert amp_precision(cpu, False) == "fp32"
    assert amp_precision(cpu, True) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert amp_precision(torch.device("cuda"), True) == "bf16"
    assert amp_precision(torch.device("mps"), True) == "fp32"
