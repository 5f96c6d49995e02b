"""Training state: RNG states survive the JSON / weights-only round trip exactly."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from zoomfeat.training.state import python_rng_state, set_rng_state, torch_rng_state


def test_rng_state_roundtrip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save(torch_rng_state(), tmp_path / "rng.pt")
    extra = json.loads(json.dumps(python_rng_state()))  # as state.json holds it
    want = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.rand(10), np.random.rand(10), random.random()  # move every generator on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), extra)
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
