"""The trainer with the tiny model on real shards: overfitting, exact resume after a kill
mid-checkpoint, checkpoints that load and export, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zoomfeat.training import checkpoint as ck
from zoomfeat.training.loop import DiffusionObjective, SampleConfig, TrainConfig, load_init, lr_at, train
from zoomfeat.training.shards import ShardError, ShardWriter, grid_side

REPO = Path(__file__).resolve().parents[2]


def make_data(path: Path, channels: int = 32, counts=None, seed: int = 0) -> Path:
    """Shards written by the real writer (latents and grids random, as the tiny model's are)."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(path, ssl_channels=channels, config_hash="test", pack_rows=0)
    for k, per_mag in enumerate(counts or [{0: 6, 2: 3}, {0: 4, 4: 2}]):
        with writer.slide(f"slide{k}") as s:
            for m, n in per_mag.items():
                g = grid_side(m)
                lat = (0.8 * rng.standard_normal((n, 3, 64, 64))).astype(np.float16)
                s.append(
                    m,
                    lat,
                    rng.standard_normal((n, channels, g, g)).astype(np.float16),
                    rng.integers(0, 5000, (n, 2)),
                    256 * 2**m,
                )
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("train_data") / "data")


def cfg(data, out, **kw):
    base = dict(
        data_dir=str(data),
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


def test_lr_warmup():
    assert [lr_at(s, 2e-5, 1000) for s in (0, 499, 999, 5000)] == [2e-8, 1e-5, 2e-5, 2e-5]


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


def test_resume_after_kill_mid_checkpoint_matches_uninterrupted_run(tmp_path, data):
    """Run B is SIGKILLed while writing its step-2 checkpoint; ``latest`` still names the
    complete step-1 checkpoint, and resuming from it ends bitwise equal to run A."""
    kw = dict(steps=3, batch_size=1, grad_accum=2, lr=1e-3, warmup_steps=2)
    a = tmp_path / "a"
    train(cfg(data, a, checkpoint_every=3, **kw))

    b = tmp_path / "b"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        import torch
        from zoomfeat.training import loop
        from zoomfeat.training.loop import TrainConfig, SampleConfig
        real_save, calls = torch.save, []
        def save(obj, path, *a, **k):
            calls.append(str(path))
            if len([c for c in calls if c.endswith("optimizer.pt")]) == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # dies in the middle of checkpoint 2
            return real_save(obj, path, *a, **k)
        torch.save = save
        loop.train(TrainConfig(data_dir={str(data)!r}, out_dir={str(b)!r}, model="tiny", num_workers=0, device="cpu",
                               log_every=1, progress=False, samples=SampleConfig(enabled=False), checkpoint_every=1,
                               **{kw!r}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == -9, proc.stderr[-3000:]
    root = b / "checkpoints"
    partial = [p for p in root.iterdir() if p.name.startswith(".tmp-step-00000002")]
    assert partial and (partial[0] / "model.safetensors").is_file()  # it really died mid-write
    assert ck.find_latest(b).name == "step-00000001"
    from zoomfeat.model import ZoomLDM

    ZoomLDM.from_pretrained(root / "latest")  # the latest checkpoint is intact and loads

    summary = train(cfg(data, b, checkpoint_every=1, **kw))
    assert summary["start_step"] == 1 and summary["step"] == 3
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    ta, tb = _tensors(ck.find_latest(a)), _tensors(ck.find_latest(b))
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, differ[:10]
    sa, sb = ck.read_state(ck.find_latest(a)), ck.read_state(ck.find_latest(b))
    assert sa["ema"] == sb["ema"] and sa["step"] == sb["step"] == 3 and sa["loss"] == sb["loss"]
    # resuming a finished run does nothing
    assert train(cfg(data, b, checkpoint_every=1, **kw))["step"] == 3


def test_checkpoint_loads_exports_and_samples(tmp_path, data, golden_dir):
    from zoomfeat.model import ZoomLDM
    from zoomfeat.training.export import export_official, load_checkpoint_model

    out = tmp_path / "run"
    train(cfg(data, out, steps=2, checkpoint_every=2, samples=SampleConfig(n=1, steps=2)))
    step = ck.find_latest(out)
    assert sorted(p.name for p in (step / "samples").iterdir()) == ["m0_20x.png", "m2_5x.png", "m4_1.25x.png"]
    from PIL import Image

    assert Image.open(step / "samples" / "m2_5x.png").size[1] > 2 * 256
    # the checkpoint is a pretrained dir holding the EMA UNet (what extraction uses)
    ema = load_file(str(step / "trainer" / "unet_ema.safetensors"))
    live = load_file(str(step / "trainer" / "unet_live.safetensors"))
    model = ZoomLDM.from_pretrained(step)
    assert all(torch.equal(model.unet.state_dict()[k], v) for k, v in ema.items())
    assert any(not torch.equal(ema[k], live[k]) for k in ema)
    loaded = ZoomLDM.load(str(out / "checkpoints" / "latest"), config="tiny")
    assert loaded.checkpoint_hash == model.checkpoint_hash
    live_model = load_checkpoint_model(out, weights="live")
    assert all(torch.equal(live_model.unet.state_dict()[k], v) for k, v in live.items())
    # export to the released layout and back: EMA and live UNets, VQ and summarizer exact
    path = export_official(out, tmp_path / "official" / "weights.ckpt")
    assert (path.parent / "config.yaml").is_file()
    sd = torch.load(path, weights_only=True)
    assert int(sd["model_ema.num_updates"]) == 2
    back_ema = ZoomLDM.from_official(path)
    back_live = ZoomLDM.from_official(path, ema=False)
    for k, v in model.state_dict().items():
        assert torch.equal(back_ema.state_dict()[k], v), k
    for k, v in live.items():
        assert torch.equal(back_live.unet.state_dict()[k], v), k
    # init from the export (or from the golden official checkpoint) starts from its EMA weights
    init = load_init(str(path), "tiny")
    assert all(torch.equal(init.unet.state_dict()[k], v) for k, v in ema.items())
    golden = load_init(str(golden_dir / "zoomldm_tiny.ckpt"), "tiny")
    ref = ZoomLDM.from_official(golden_dir / "zoomldm_tiny.ckpt", config=golden_dir / "zoomldm_tiny.yaml")
    assert all(torch.equal(golden.unet.state_dict()[k], v) for k, v in ref.unet.state_dict().items())


def test_init_of_another_architecture_is_a_clear_error(tmp_path, golden_dir):
    from zoomfeat.model import ZoomLDM

    # an official checkpoint that does not fit the requested architecture
    with pytest.raises(
        ValueError, match=r"init checkpoint .*zoomldm_tiny.ckpt cannot be loaded as model=zoomldm_brca"
    ):
        load_init(str(golden_dir / "zoomldm_tiny.ckpt"), "zoomldm_brca")
    # a pretrained dir (its own config beside it) of another architecture
    tiny_dir = ZoomLDM.from_config("tiny", seed=0).save_pretrained(tmp_path / "tiny_model")
    with pytest.raises(
        ValueError,
        match=r"has another architecture than model=zoomldm_brca.*model_channels=32.*model_channels=192",
    ):
        load_init(str(tiny_dir), "zoomldm_brca")
    with pytest.raises(FileNotFoundError, match="nothing_here: no such file or directory"):
        load_init(str(tmp_path / "nothing_here"), "tiny")


def test_bad_data_is_a_clear_error(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="does not exist.*zoomfeat.prepare"):
        train(cfg(tmp_path / "missing", tmp_path / "o1", steps=1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="holds no prepared slides"):
        train(cfg(tmp_path / "empty", tmp_path / "o2", steps=1))
    narrow = make_data(tmp_path / "narrow", channels=8, counts=[{0: 2}])
    with pytest.raises(ValueError, match="UNI grids of width 8 .* model=tiny expects 32"):
        train(cfg(narrow, tmp_path / "o3", steps=1))
    with pytest.raises(ValueError, match="precision=fp16 needs a CUDA device"):
        train(cfg(data, tmp_path / "o4", steps=1, precision="fp16"))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        cfg(data, tmp_path / "o5", steps=0)


def test_objective_checkpointing_and_bf16(data):
    """Gradient checkpointing gives the same gradients; bf16 autocast runs on CPU too."""
    from zoomfeat.model import ZoomLDM
    from zoomfeat.training.dataset import MultiScaleDataset, collate_multiscale
    from zoomfeat.training.shards import ShardIndex

    model = ZoomLDM.from_config("tiny", seed=0)
    ds = MultiScaleDataset(ShardIndex.load(data), seed=0, p_uncond=0.5)
    batch = collate_multiscale([ds[n] for n in range(3)])
    args = (batch["latent"], batch["noise"], batch["t"], batch["keep"], batch["ssl_groups"])
    obj = DiffusionObjective(model).train()
    assert {n.split(".")[0] for n, _ in obj.named_parameters()} == {"unet", "summarizer"}  # VQ outside

    def grads():
        obj.zero_grad()
        loss = obj(*args)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}

    loss, g = grads()
    model.unet.enable_gradient_checkpointing()
    loss2, g2 = grads()
    torch.testing.assert_close(loss2, loss)
    for n in g:
        torch.testing.assert_close(g2[n], g[n], rtol=1e-4, atol=1e-6)
    # dropped contexts are zeros: a fully dropped batch gives no gradient to the summarizer
    obj.zero_grad()
    obj(*args[:3], torch.zeros_like(batch["keep"]), args[4]).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.summarizer.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(obj(*args))
