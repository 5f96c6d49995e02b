"""zoomfeat.features.fuse: each 20x row next to its 5x parent's row."""

from __future__ import annotations

import numpy as np
import pytest

from zoomfeat.features.fuse import fuse


def test_fuse_concatenates_each_row_with_its_parent():
    f20 = np.arange(6, dtype=np.float32).reshape(3, 2)
    f5 = np.array([[10, 11, 12], [20, 21, 22]], np.float32)
    out = fuse(f20, f5, np.array([1, 0, 1]))
    np.testing.assert_array_equal(out, [[0, 1, 20, 21, 22], [2, 3, 10, 11, 12], [4, 5, 20, 21, 22]])
    assert fuse(np.zeros((0, 2)), f5, np.zeros(0, np.int64)).shape == (0, 5)
    with pytest.raises(ValueError, match="out of range"):
        fuse(f20, f5, np.array([0, 2, 1]))
