"""The trainers' shared machinery in ``runtime/``: resume semantics, the ``trainer/`` directory
round trip (AdamW, EMA, RNG restored so the next step is bitwise the same), one-process DDP helpers.

(The checkpoint directories' atomicity and kills are tested in tests/training/test_checkpoint.py;
the EMA maths in tests/training/test_ema.py.)
"""

from __future__ import annotations

import json

import pytest
import torch

from zoomfeat.runtime import checkpoints as ck
from zoomfeat.runtime.distributed import DistInfo, apply_threads, wrap_ddp
from zoomfeat.runtime.ema import EMA
from zoomfeat.runtime.errors import OutputError, WeightsNotFoundError
from zoomfeat.runtime.train_state import (
    TRAINER_DIR,
    read_trainer_dir,
    restore_optimisation,
    write_trainer_dir,
)


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    return net, opt, EMA(net, 0.9, warmup=True)


def _step(net, opt, ema) -> float:
    x = torch.randn(8, 6)  # from the global RNG: restored by the checkpoint
    loss = net(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    ema.update(net)
    return float(loss.detach())


def test_trainer_dir_round_trip_continues_bitwise(tmp_path):
    """Two steps, a checkpoint, two more; a fresh set of parts restored from the checkpoint (and
    the global RNG moved on meanwhile) makes the same two steps: same ops, same inputs, the
    state restored exactly (safetensors / weights-only torch.save of the tensors), so bitwise."""
    net, opt, ema = _parts()
    _step(net, opt, ema), _step(net, opt, ema)

    def write(tmp):
        weights = {"live": net.state_dict(), "ema": ema.state_dict()}
        write_trainer_dir(tmp / TRAINER_DIR, weights, optimizer=opt, scaler=None, ema=ema, state={"step": 2})

    path = ck.write_checkpoint(tmp_path / "checkpoints", 2, write)
    want = [_step(net, opt, ema) for _ in range(2)]
    torch.rand(100)  # the global RNG moves on

    net2, opt2, ema2 = _parts(seed=1)  # other initial weights: all must come from the checkpoint
    resumed = read_trainer_dir(path / TRAINER_DIR, ("live", "ema"), torch.device("cpu"))
    assert resumed["state"]["step"] == 2 and resumed["state"]["ema"] == {
        "decay": 0.9,
        "warmup": True,
        "num_updates": 2,
    }
    net2.load_state_dict(resumed["live"])
    restore_optimisation(resumed, ema=ema2, ema_key="ema", optimizer=opt2)
    got = [_step(net2, opt2, ema2) for _ in range(2)]
    assert got == want and ema2.num_updates == ema.num_updates == 4
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert all(torch.equal(ema.shadow[k], ema2.shadow[k]) for k in ema.shadow)
    assert json.loads((path / "trainer" / "state.json").read_text())["rng"]["python"][0] == 3


def test_resume_source_semantics(tmp_path):
    out = tmp_path / "run"
    assert ck.resume_source(out, "auto") is None  # nothing yet: start afresh
    assert ck.resume_source(out, False) is None
    for step in (1, 2):
        ck.write_checkpoint(
            ck.checkpoint_root(out),
            step,
            lambda tmp: ((tmp / "trainer").mkdir(), (tmp / "trainer" / "state.json").write_text("{}")),
        )
    assert ck.resume_source(out, "auto").name == ck.resume_source(out, True).name == "step-00000002"
    assert ck.resume_source(out, str(out / "checkpoints" / "step-00000001")).name == "step-00000001"
    with pytest.raises(OutputError, match="already holds training checkpoints and resume=false"):
        ck.resume_source(out, "false")
    with pytest.raises(WeightsNotFoundError, match="no complete training checkpoint"):
        ck.resume_source(out, str(tmp_path / "elsewhere"))


def test_one_process_ddp_helpers():
    net = torch.nn.Linear(2, 2)
    assert wrap_ddp(net, DistInfo()) is net  # world size 1: no wrapper, no process group
    before = torch.get_num_threads()
    try:
        apply_threads(1)
        assert torch.get_num_threads() == 1
        apply_threads(None)  # leaves the setting alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
