"""zoomfeat.mil.train: one fold's training loop (planted signal learnt, chance on shuffled labels,
determinism, batches of several bags, class weights, clear device errors)."""

import numpy as np
import pytest
import torch

from zoomfeat.mil.bagset import BagSet
from zoomfeat.mil.config import MILConfig
from zoomfeat.mil.feeding import BagFeeder, predict
from zoomfeat.mil.metrics import binary_metrics
from zoomfeat.mil.splits import fold_keys, fold_parts, make_splits
from zoomfeat.mil.train import class_weights, train_fold

from .bagfactory import in_memory_bagset, planted_bags

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
    bags = in_memory_bagset(table, feats)
    auc = binary_metrics(bags.labels, _cv_predictions(bags, FAST))["auc"]
    assert auc > 0.9, auc
    shuffled = np.random.default_rng(5).permutation(bags.labels)
    null = in_memory_bagset(table, feats, labels=shuffled)
    null_auc = binary_metrics(null.labels, _cv_predictions(null, FAST))["auc"]
    assert abs(null_auc - 0.5) < 0.2, null_auc


def test_training_is_deterministic_for_a_seed():
    table, feats = planted_bags(n_cases=20, dim=8, seed=2)
    bags = in_memory_bagset(table, feats)
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


def test_batches_of_several_bags_train_end_to_end():
    # batch_size > 1 (padded, masked) with a random instance subset per bag
    table, feats = planted_bags(n_cases=12, dim=5, seed=4)
    bags = in_memory_bagset(table, feats)
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
        train_fold(
            in_memory_bagset(table, feats), [0, 1], [], MILConfig(hidden=[4]), device="cuda", progress=False
        )
