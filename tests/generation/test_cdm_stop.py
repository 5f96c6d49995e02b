"""The CDM trainer stopped by a signal (``generate mode=cdm_train`` on SLURM): the step finishes,
a checkpoint of it is written, :class:`StopRequested` carries the one line and exit status, and
the plain rerun ends bitwise equal to an uninterrupted run (same process, one thread: see
test_cdm_training.py's exact-resume test for why that is bitwise)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoomfeat.generation.cdm import DiT
from zoomfeat.generation.cdm_data import CDMData, CDMStream
from zoomfeat.generation.cdm_training import EMA_FILE, CDMTrainOptions, train_cdm
from zoomfeat.runtime import checkpoints as ck
from zoomfeat.runtime.seeding import seeded
from zoomfeat.runtime.stopping import StopRequested, stop_on_signals

pytestmark = pytest.mark.usefixtures("one_thread")
FACTS = {"model": "DiT-TINY", "in_channels": 64}


@pytest.fixture(scope="module")
def data(cdm_shards) -> CDMData:
    from zoomfeat.training.shards import ShardIndex, ShardReader

    index = ShardIndex.load(cdm_shards)
    reader = ShardReader(index)
    return CDMData(
        index.counts(), lambda m, i: reader.read(m, i)["ssl"], index.ssl_channels, index.fingerprint()
    )


def _run(ldm, data, out: Path, log=None) -> dict:
    opts = CDMTrainOptions(steps=5, batch_size=4, lr=1e-3, ema_decay=0.5, log_every=1, checkpoint_every=100)
    cdm = seeded(lambda: DiT.variant("tiny", in_channels=64), 0)
    return train_cdm(cdm, CDMStream(ldm, data, seed=0), opts=opts, out_dir=out, run_facts=FACTS, log=log)


def test_sigterm_checkpoints_the_step_and_the_rerun_ends_equal(tmp_path, tiny_ema, data):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(tiny_ema, data, a)

    def log(line: str) -> None:  # the trainer's log hook: SIGTERM to this process after step 2
        if line.startswith("step 2/"):
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_on_signals(), pytest.raises(StopRequested) as stop:
        _run(tiny_ema, data, b, log=log)
    assert stop.value.exit_code == 143 and stop.value.signal_name == "SIGTERM"
    assert (
        "stopped after step 2 of 5, checkpoint" in stop.value.message
        and "step-00000002" in stop.value.message
    )
    assert "rerun the same command" in stop.value.message and "\n" not in stop.value.message
    assert ck.find_latest(b).name == "step-00000002" and ck.read_state(ck.find_latest(b))["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored

    rb = _run(tiny_ema, data, b)
    assert (rb["start_step"], rb["step"]) == (2, 5)
    ca, cb = ck.find_latest(a), ck.find_latest(b)
    for f in (EMA_FILE, "trainer/model_live.safetensors", "trainer/model_ema.safetensors"):
        ta, tb = load_file(str(ca / f)), load_file(str(cb / f))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f
