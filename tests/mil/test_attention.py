"""zoomfeat.mil.attention: an attention file reads back (softmax weights, coords, label, prob)."""

import numpy as np
import pytest

from zoomfeat.mil.attention import read_attention, write_attention


def test_attention_round_trip(tmp_path):
    logits = np.array([0.5, -1.0, 2.0], np.float32)
    coords = np.array([[0, 0], [256, 0], [512, 0]])
    path = write_attention(
        tmp_path / "a.h5",
        {
            "TCGA-AA-0001-01Z-00-DX1.X": {
                "attention_logits": logits,
                "coords": coords,
                "label": 1,
                "prob": 0.7,
            }
        },
        {"fold": 0},
    )
    back = read_attention(path)["TCGA-AA-0001-01Z-00-DX1.X"]
    # Both sides are float32 softmaxes (the stored one shifts by the max logit first): exp, sum and
    # divide each round by <= 2^-24 relative, so they differ by a few * 6e-8; rtol 1e-6 is ~4x that.
    np.testing.assert_allclose(back["attention"], np.exp(logits) / np.exp(logits).sum(), rtol=1e-6)
    np.testing.assert_array_equal(back["coords"], coords)
    assert back["label"] == 1 and back["prob"] == pytest.approx(0.7)
