"""CDM training on the trainers' shared machinery: the keyed stream, exact resume, the checkpoint
directory, the EMA, refusals; with the tiny ZoomLDM (its real summarizer makes the targets), the
tiny DiT and real shards (HDF5 written and read by ``training.shards``).

Every test runs torch on one thread: the exact-resume comparison needs one thread count
throughout (float32 reductions are split over threads), and on the shared 2-core machine one
thread is also the fastest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoomfeat.generation.cdm import DiT, load_cdm
from zoomfeat.generation.cdm_data import CDMData, CDMStream, cdm_targets
from zoomfeat.generation.cdm_training import EMA_FILE, CDMTrainer, CDMTrainOptions, train_cdm
from zoomfeat.runtime import checkpoints as ck
from zoomfeat.runtime.distributed import DistInfo
from zoomfeat.runtime.errors import ConfigError, OutputError
from zoomfeat.runtime.seeding import seeded

#: float32 unit roundoff
U = 2.0**-24
FACTS = {"model": "DiT-TINY", "in_channels": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(cdm_shards) -> CDMData:
    from zoomfeat.training.shards import ShardIndex, ShardReader

    index = ShardIndex.load(cdm_shards)
    reader = ShardReader(index)
    return CDMData(
        index.counts(), lambda m, i: reader.read(m, i)["ssl"], index.ssl_channels, index.fingerprint()
    )


def _fresh() -> DiT:
    return seeded(lambda: DiT.variant("tiny", in_channels=64), 0)


def _run(ldm, data, out: Path, steps: int, facts=FACTS, **kw) -> dict:
    opts = CDMTrainOptions(
        **{"steps": steps, "batch_size": 4, "lr": 1e-3, "ema_decay": 0.5, "log_every": 1, **kw}
    )
    return train_cdm(_fresh(), CDMStream(ldm, data, seed=0), opts=opts, out_dir=out, run_facts=facts)


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_stream_is_keyed_by_sample_number(tiny_ema, data):
    s, again, other = CDMStream(tiny_ema, data, 0), CDMStream(tiny_ema, data, 0), CDMStream(tiny_ema, data, 1)
    draws = [s.draw(n) for n in range(16)]
    assert {d["mag"] for d in draws} == {0, 2, 4}  # uniform over the magnifications the data hold
    assert all(0 <= d["i"] < data.counts[d["mag"]] and 0 <= d["t"] < 1000 for d in draws)
    for n in (0, 7):
        a, b = s.draw(n), again.draw(n)
        assert (a["mag"], a["i"], a["t"]) == (b["mag"], b["i"], b["t"]) and torch.equal(
            a["noise"], b["noise"]
        )
    assert not torch.equal(s.draw(3)["noise"], other.draw(3)["noise"])
    # a batch is its samples, whatever it is cut into: draws exact, targets per sample
    x0, mag, t, noise = s.batch(list(range(8)))
    assert x0.shape == noise.shape == (8, 64, 65) and mag.tolist() == [d["mag"] for d in draws[:8]]
    assert t.tolist() == [d["t"] for d in draws[:8]]
    assert torch.equal(noise, torch.stack([d["noise"] for d in draws[:8]]))
    one = draws[5]
    grid = torch.as_tensor(data.read(one["mag"], one["i"])).float()[None]
    ref = cdm_targets(tiny_ema, grid, torch.tensor([one["mag"]]))[0]
    # The target of sample 5 summarised alone vs in a batch of its magnification: the same
    # operations, but matmul blocking depends on the batch, so dot products of <= 128 terms
    # (the tiny summarizer's widths) may sum in another order: <= 127 u sum|terms| each. The
    # output is LayerNorm-ed, |x0| <= 4.4 here, and the terms' absolute sums are of the order of
    # the outputs: a few ulp of 4.4 (observed 2 ulp = 9.5e-7); bound 64 u * max|x0| (~1.7e-5).
    assert (x0[5] - ref).abs().max() <= 64 * U * float(x0.abs().max())


def test_resume_continues_the_uninterrupted_run_exactly(tmp_path, tiny_ema, data):
    """Run A: 4 steps straight. Run B: 2 steps, a partial checkpoint directory as a kill leaves it,
    then the same command with steps=4. Same process, one thread, same sample numbers: every
    operation repeats in the same order, and the checkpoint round trip is exact (safetensors and
    weights-only torch.save of the tensors themselves), so B ends bitwise equal to A."""
    a, b = tmp_path / "a", tmp_path / "b"
    ra = _run(tiny_ema, data, a, 4, checkpoint_every=100)
    rb = _run(tiny_ema, data, b, 2, checkpoint_every=100)
    assert (rb["start_step"], rb["step"]) == (0, 2)
    killed = b / "checkpoints" / ".step-00000003.tmp-99999"
    (killed / "trainer").mkdir(parents=True)
    (killed / EMA_FILE).write_bytes(b"half a file")
    rb = _run(tiny_ema, data, b, 4, checkpoint_every=100)
    assert (rb["start_step"], rb["step"], ra["step"]) == (2, 4, 4) and not killed.exists()
    ca, cb = ck.find_latest(a), ck.find_latest(b)
    assert ca.name == cb.name == "step-00000004" and Path(rb["checkpoint"]) == cb
    for f in (EMA_FILE, "trainer/model_live.safetensors", "trainer/model_ema.safetensors"):
        ta, tb = load_file(str(ca / f)), load_file(str(cb / f))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f
    oa, ob = (torch.load(c / "trainer" / "optimizer.pt", weights_only=True)["state"] for c in (ca, cb))
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    sa, sb = ck.read_state(ca), ck.read_state(cb)
    assert sa["loss"] == sb["loss"] and sa["ema"] == sb["ema"] == {
        "decay": 0.5,
        "warmup": False,
        "num_updates": 4,
    }
    assert sa["global_batch"] == 4 and sa["samples_seen"] == 16 and sa["model"] == "DiT-TINY"
    assert [r["loss"] for r in _log(a)][2:] == [r["loss"] for r in _log(b)][2:]
    # a finished run resumed does nothing
    done = _run(tiny_ema, data, b, 4, checkpoint_every=100)
    assert done["start_step"] == done["step"] == 4 and done["checkpoint"] == str(cb)


def test_checkpoints_hold_the_ema_dit_and_the_live_one(tmp_path, tiny_ema, data):
    """Three steps, a checkpoint each, two kept. Between consecutive checkpoints the EMA moves by
    e3 = e2 + 0.5 (w3 - e2) (decay 0.5, constant: no warm-up, as the official update_ema);
    cdm_ema.safetensors loads with load_cdm and is that EMA; the DiT's fixed position table has
    no shadow and never moves."""
    r = _run(tiny_ema, data, tmp_path / "run", 3, checkpoint_every=1, keep_checkpoints=2)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002", "step-00000003"]
    s2, s3 = root / "step-00000002", Path(r["checkpoint"])
    assert sorted(p.name for p in s3.iterdir()) == [EMA_FILE, "trainer"] and Path(r["ema"]) == s3 / EMA_FILE
    e2 = load_file(str(s2 / EMA_FILE))
    w2 = load_file(str(s2 / "trainer" / "model_live.safetensors"))
    w3 = load_file(str(s3 / "trainer" / "model_live.safetensors"))
    e3 = load_cdm(r["ema"], "tiny", in_channels=64).state_dict()
    assert torch.equal(e3["pos_embed"], _fresh().state_dict()["pos_embed"])
    for k, w in w3.items():
        ref = e2[k].double() + 0.5 * (w.double() - e2[k].double())
        # lerp in float32: (p - s) rounds (<= u |p - s|), x0.5 is exact, the sum rounds
        # (<= u |result|): |error| <= 2 u max(|p|, |s|)
        bound = 2 * U * float(torch.maximum(w.abs(), e2[k].abs()).max())
        assert (e3[k].double() - ref).abs().max() <= bound, k
    moved = [k for k in w3 if not torch.equal(w3[k], w2[k]) and not torch.equal(e3[k], w3[k])]
    assert len(moved) > 10  # step 3 changed most weights, and the EMA lags behind them
    shadows = load_file(str(s3 / "trainer" / "model_ema.safetensors"))
    assert "pos_embed" not in shadows and all(torch.equal(shadows[k], e3[k]) for k in shadows)
    assert ck.read_state(s3)["ema"] == {"decay": 0.5, "warmup": False, "num_updates": 3}


def test_refusals_are_one_line_errors(tmp_path, tiny_ema, data):
    out = tmp_path / "run"
    _run(tiny_ema, data, out, 1, checkpoint_every=1)
    errors = []
    with pytest.raises(OutputError, match="already holds training checkpoints and resume=false") as ex:
        _run(tiny_ema, data, out, 2, resume=False)
    errors.append(ex.value)
    with pytest.raises(ConfigError, match="model='DiT-TINY', this run builds model='DiT-S'") as ex:
        _run(tiny_ema, data, out, 2, facts={**FACTS, "model": "DiT-S"})
    errors.append(ex.value)
    other = ck.write_checkpoint(  # a ZoomLDM trainer's checkpoint (state.json without a DiT)
        tmp_path / "ldm" / "checkpoints",
        5,
        lambda tmp: (
            (tmp / "trainer").mkdir(),
            (tmp / "trainer" / "state.json").write_text('{"model_name": "tiny"}'),
        ),
    )
    with pytest.raises(ConfigError, match="is not a CDM training checkpoint") as ex:
        _run(tiny_ema, data, tmp_path / "fresh", 2, resume=str(other))
    errors.append(ex.value)
    opts = CDMTrainOptions(steps=1, batch_size=4)
    with pytest.raises(ConfigError, match="batch_size=4 .* multiple of the 3 processes") as ex:
        CDMTrainer(
            _fresh(), CDMStream(tiny_ema, data), opts=opts, out_dir=out, info=DistInfo(rank=0, world_size=3)
        )
    errors.append(ex.value)
    with pytest.raises(ConfigError, match="the data hold no tiles") as ex:
        CDMStream(tiny_ema, CDMData({0: 0}, data.read, 32))
    errors.append(ex.value)
    assert all("\n" not in str(e) for e in errors)
    assert ck.read_state(ck.find_latest(out))["step"] == 1  # nothing refused touched the run
