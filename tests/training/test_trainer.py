"""The trainer with the tiny model on real shards: overfitting, exact resume after a kill
mid-checkpoint, checkpoint contents and sample grids, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zoomfeat.runtime import checkpoints as ck
from zoomfeat.runtime.errors import ConfigError, OutputError, ShardError
from zoomfeat.training.config import SampleConfig, TrainConfig
from zoomfeat.training.shards import ShardsNotFoundError
from zoomfeat.training.trainer import train

from .conftest import ONE_THREAD_ENV, make_data

REPO = Path(__file__).resolve().parents[2]


def cfg(data_dir, out, **kw):
    base = dict(
        data=str(data_dir),
        out_dir=str(out),
        model="tiny",
        batch_size=2,
        num_workers=0,
        device="cpu",
        lr=1e-3,
        warmup_steps=2,
        log_every=1,
        progress=False,
        samples=SampleConfig(enabled=False),
    )
    base.update(kw)
    return TrainConfig(**base)


def _log(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def test_loss_falls_on_a_fixed_batch(tmp_path, data):
    out = tmp_path / "run"
    summary = train(
        cfg(
            data,
            out,
            steps=10,
            overfit_batch=True,
            batch_size=3,
            lr=3e-3,
            warmup_steps=1,
            checkpoint_every=100,
        )
    )
    losses = [r["loss"] for r in _log(out)]
    assert len(losses) == 10 and summary["step"] == 10
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses
    state = ck.read_state(ck.find_latest(out))
    assert state["step"] == 10 and state["samples_seen"] == 30 and state["ema"]["num_updates"] == 10


def _tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    t = {f"live.{k}": v for k, v in load_file(str(ckpt / "trainer" / "unet_live.safetensors")).items()}
    t.update({f"ema.{k}": v for k, v in load_file(str(ckpt / "trainer" / "unet_ema.safetensors")).items()})
    t.update({f"model.{k}": v for k, v in load_file(str(ckpt / "model.safetensors")).items()})
    opt = torch.load(ckpt / "trainer" / "optimizer.pt", weights_only=True)
    for i, s in opt["state"].items():
        for k, v in s.items():
            t[f"opt.{i}.{k}"] = v
    return t


#: a training run in a fresh process; with kill_at=k it SIGKILLs itself while writing its k-th checkpoint
RUNNER = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    kw, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
    if kill_at:
        real_save, calls = torch.save, []
        def save(obj, path, *a, **k):
            calls.append(str(path))
            if len([c for c in calls if c.endswith("optimizer.pt")]) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # dies in the middle of that checkpoint
            return real_save(obj, path, *a, **k)
        torch.save = save
    from zoomfeat.training.config import TrainConfig
    from zoomfeat.training.trainer import train
    print(json.dumps(train(TrainConfig(**kw))))
    """
)


def _start_process(tmp_path: Path, kw: dict, kill_at: int = 0) -> subprocess.Popen:
    """Every process of the comparison runs with the same thread settings: one OpenMP/MKL thread
    from the environment, ``threads=1`` (intra- and inter-op) applied by the trainer."""
    env = {**os.environ, **ONE_THREAD_ENV, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(kw), str(kill_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for ``proc`` (600 s at most; killed otherwise)."""
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()  # a no-op once it has exited
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _run_process(tmp_path: Path, kw: dict, kill_at: int = 0) -> subprocess.CompletedProcess:
    return _finish(_start_process(tmp_path, kw, kill_at))


def test_resume_after_kill_mid_checkpoint_matches_uninterrupted_run(tmp_path, data):
    """Run B is SIGKILLed while writing its step-2 checkpoint; ``latest`` still names the
    complete step-1 checkpoint, and resuming from it ends bitwise equal to run A.

    The promise is exact resume on the same machine with the same threads, so run A, the killed
    run and the resumed run are three fresh processes with identical settings (environment and
    ``threads=1``); nothing of this test process's torch state takes part."""
    kw = dict(
        data=str(data),
        model="tiny",
        num_workers=0,
        device="cpu",
        log_every=1,
        progress=False,
        samples={"enabled": False},
        threads=1,
        steps=3,
        batch_size=1,
        grad_accum=2,
        lr=1e-3,
        warmup_steps=2,
    )
    a, b = tmp_path / "a", tmp_path / "b"
    # run A and the run that is killed are independent: both at once (one thread each, 2 cores)
    run_a = _start_process(tmp_path, {**kw, "out_dir": str(a), "checkpoint_every": 3})
    proc = _run_process(tmp_path, {**kw, "out_dir": str(b), "checkpoint_every": 1}, kill_at=2)
    proc_a = _finish(run_a)
    assert proc_a.returncode == 0, proc_a.stderr[-3000:]
    assert proc.returncode == -9, proc.stderr[-3000:]
    root = b / "checkpoints"
    partial = [p for p in root.iterdir() if p.name.startswith(".step-00000002.tmp-")]
    assert partial and (partial[0] / "model.safetensors").is_file()  # it really died mid-write
    assert ck.find_latest(b).name == "step-00000001"
    from zoomfeat.model import ZoomLDM

    ZoomLDM.from_pretrained(root / "latest")  # the latest checkpoint is intact and loads

    proc = _run_process(tmp_path, {**kw, "out_dir": str(b), "checkpoint_every": 1})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["start_step"] == 1 and summary["step"] == 3
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    ta, tb = _tensors(ck.find_latest(a)), _tensors(ck.find_latest(b))
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, differ[:10]
    sa, sb = ck.read_state(ck.find_latest(a)), ck.read_state(ck.find_latest(b))
    assert sa["ema"] == sb["ema"] and sa["step"] == sb["step"] == 3 and sa["loss"] == sb["loss"]
    # resuming a finished run does nothing
    done = train(TrainConfig(**{**kw, "out_dir": str(b), "checkpoint_every": 1}))
    assert done["start_step"] == done["step"] == 3


def test_checkpoint_holds_ema_live_and_sample_grids(tmp_path, data):
    from PIL import Image

    from zoomfeat.model import ZoomLDM

    out = tmp_path / "run"
    train(cfg(data, out, steps=2, checkpoint_every=2, samples=SampleConfig(n=1, steps=2)))
    step = ck.find_latest(out)
    assert sorted(p.name for p in (step / "samples").iterdir()) == ["m0_20x.png", "m2_5x.png", "m4_1.25x.png"]
    assert Image.open(step / "samples" / "m2_5x.png").size[1] > 2 * 256
    # the checkpoint is a pretrained dir holding the EMA UNet (what extraction uses)
    ema = load_file(str(step / "trainer" / "unet_ema.safetensors"))
    live = load_file(str(step / "trainer" / "unet_live.safetensors"))
    model = ZoomLDM.from_pretrained(step)
    assert all(torch.equal(model.unet.state_dict()[k], v) for k, v in ema.items())
    assert any(not torch.equal(ema[k], live[k]) for k in ema)
    loaded = ZoomLDM.load(str(out / "checkpoints" / "latest"), config="tiny")
    assert loaded.checkpoint_hash == model.checkpoint_hash
    state = ck.read_state(step)
    assert state["config"]["model"]["name"] == "tiny" and state["config"]["threads"] is None


def test_bad_data_is_a_clear_error(tmp_path, data):
    with pytest.raises(ShardsNotFoundError, match="does not exist.*zoomfeat.prepare"):
        train(cfg(tmp_path / "missing", tmp_path / "o1", steps=1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="holds no prepared slides"):
        train(cfg(tmp_path / "empty", tmp_path / "o2", steps=1))
    narrow = make_data(tmp_path / "narrow", channels=8, counts=[{0: 2}])
    with pytest.raises(ShardError, match="UNI grids of width 8 .* model=tiny expects 32"):
        train(cfg(narrow, tmp_path / "o3", steps=1))
    with pytest.raises(ConfigError, match="precision=fp16 needs a CUDA device"):
        train(cfg(data, tmp_path / "o4", steps=1, precision="fp16"))
    with pytest.raises(ConfigError, match="no training data"):
        train(cfg(data, tmp_path / "o5", steps=1, data=None))


def test_resume_false_refuses_a_run_with_checkpoints(tmp_path, data):
    out = tmp_path / "run"
    train(cfg(data, out, steps=1, checkpoint_every=1))
    with pytest.raises(OutputError, match="already holds training checkpoints and resume=false"):
        train(cfg(data, out, steps=2, resume=False))


def test_damaged_newest_checkpoints_resume_from_the_one_before(tmp_path, data):
    """An uninterrupted 3-step run with a checkpoint per step; then the newest checkpoint loses
    half of its live UNet file and the one before half of its optimizer state (truncated, as a
    full disk or a cut copy leaves them). A plain rerun with steps=3 warns naming the damaged
    newest and the checkpoint it uses (step 1), trains steps 2 and 3 again and ends bitwise equal
    to the uninterrupted run (the exact-resume promise: same machine, one thread, fresh
    processes with identical settings)."""
    kw = dict(
        data=str(data),
        out_dir=str(tmp_path / "run"),
        model="tiny",
        num_workers=0,
        device="cpu",
        log_every=1,
        progress=False,
        samples={"enabled": False},
        threads=1,
        steps=3,
        batch_size=2,
        lr=1e-3,
        warmup_steps=2,
        checkpoint_every=1,
    )
    proc = _run_process(tmp_path, kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "run" / "checkpoints"
    # copies: safetensors maps the file, and truncating a mapped file makes its pages fault (SIGBUS)
    want = {k: v.clone() for k, v in _tensors(root / "step-00000003").items()}
    for rel, ckpt in (
        ("trainer/unet_live.safetensors", "step-00000003"),
        ("trainer/optimizer.pt", "step-00000002"),
    ):
        f = root / ckpt / rel
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    proc = _run_process(tmp_path, kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [ln for ln in proc.stderr.splitlines() if "is damaged" in ln]
    assert (
        len(warning) == 1
        and "step-00000003 is damaged (trainer/unet_live.safetensors is truncated" in warning[0]
    )
    assert "using step-00000001, the newest usable one" in warning[0] and "as are 1 more" in warning[0]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["start_step"] == 1 and summary["step"] == 3
    got = _tensors(ck.find_latest(tmp_path / "run"))
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differ, differ[:10]
    from zoomfeat.runtime.checkpoints import checkpoint_damage

    assert [checkpoint_damage(p) for _, p in ck.list_checkpoints(root)] == [None, None, None]  # rewritten
