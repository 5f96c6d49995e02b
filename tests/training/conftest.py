"""Training tests run torch on one thread (and their subprocesses too): exact resume comparisons
need the same thread count in every process, and on the shared 2-core machine one thread per
process is several times faster than two fighting for the cores."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)
