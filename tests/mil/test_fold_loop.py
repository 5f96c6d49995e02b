"""zoomfeat.mil.fold_loop: one training seed per fold, shared by every feature set (paired design).

The loop itself runs in test_benchmark.py (predictions in their own test fold, attention files)."""

from zoomfeat.mil.fold_loop import fold_seed


def test_same_fold_seed_for_every_feature_set():
    assert fold_seed(0, 0, 1) == fold_seed(0, 0, 1) != fold_seed(0, 0, 2) != fold_seed(1, 0, 1)
