"""One process without torchrun: world size 1, the resolved device, barriers and means are no-ops."""

from __future__ import annotations

import pytest
import torch

from zoomfeat.runtime.distributed import barrier, init_distributed, mean_over_ranks, shutdown
from zoomfeat.runtime.errors import ConfigError


def test_single_process(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert info.device == torch.device("cpu")
    barrier(info)
    x = torch.tensor(3.0)
    assert mean_over_ranks(x, info) is x and float(x) == 3.0
    shutdown(info)
    with pytest.raises(ConfigError, match="is not a device"):
        init_distributed("gpu0")
