"""``python -m zoomfeat.train`` end to end: prepared data -> training (1 process and 2-process
DDP under torchrun with gloo) -> export -> feature extraction with the trained checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoomfeat.cli import hydra_main
from zoomfeat.runtime import checkpoints as ck
from zoomfeat.train import run

REPO = Path(__file__).resolve().parent.parent
COMMON = [
    "model=tiny",
    "steps=2",
    "num_workers=0",
    "device=cpu",
    "lr=1e-3",
    "warmup_steps=1",
    "log_every=1",
    "progress=false",
    "samples.enabled=false",
    "threads=1",  # every process, in-process runs and torchrun's ranks alike
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synthetic_slide_factory):
    """Real shards of a synthetic slide (tiny model seed 0, tiny encoder) at 20x and 5x."""
    from zoomfeat.encoders import build_encoder
    from zoomfeat.model import ZoomLDM
    from zoomfeat.training.config import PrepareConfig
    from zoomfeat.training.prepare import prepare

    slide = synthetic_slide_factory(
        "train_cli", width=1024, height=1024, mpp=0.5, levels=2, seed=11, tissue_fraction=0.5
    )
    out = tmp_path_factory.mktemp("prepared") / "data"
    torch.set_num_threads(1)
    prepare(
        [slide],
        PrepareConfig(out_dir=str(out), mags=["20x", "5x"], num_workers=0, progress=False),
        ZoomLDM.from_config("tiny", seed=0),
        build_encoder("tiny", seed=0),
    )
    return slide, out


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_ddp_two_processes_gloo_matches_one_process(tmp_path, prepared):
    """torchrun --nproc_per_node=2 (gloo): 2 ranks x batch 1 see distinct samples and train
    exactly what one process does with batch 2 (same global batch, same sample numbers)."""
    _, data = prepared
    ddp_out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "zoomfeat.train",
        f"data={data}",
        f"out_dir={ddp_out}",
        "batch_size=1",
        "checkpoint_every=2",
        *COMMON,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    state = ck.read_state(ck.find_latest(ddp_out))
    assert (
        state["step"] == 2
        and state["world_size"] == 2
        and state["global_batch"] == 2
        and state["samples_seen"] == 4
    )
    assert [r["step"] for r in _log(ddp_out)] == [1, 2]  # rank 0 alone writes the log
    assert len([p for p in (ddp_out / "checkpoints").iterdir() if p.name.startswith("step-")]) == 1
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"train"')]
    assert len(printed) == 1 and printed[0]["train"]["step"] == 2

    one_out = tmp_path / "one"
    summary = hydra_main(
        "train", run, argv=[str(data), f"out_dir={one_out}", "batch_size=2", "checkpoint_every=2", *COMMON]
    )
    assert summary["step"] == 2 and summary["global_batch"] == 2
    ddp_loss, one_loss = [r["loss"] for r in _log(ddp_out)], [r["loss"] for r in _log(one_out)]
    # Not bitwise: 2 ranks x batch 1 and 1 process x batch 2 sum in other orders. Tolerances from
    # float32 rounding (u = 2^-24 ~ 6e-8):
    # - step 1, same weights and samples: the loss is a mean of n = 2*3*64*64 = 24576 squared
    #   errors, summed per rank then all-reduced vs in one pairwise sum, |rel. diff| <=
    #   log2(n) u ~ 15 * 6e-8 ~ 1e-6; per-element forward differences from batch-size-dependent
    #   kernel blocking are of the same order and average out in the mean. rel 1e-5: 10x that.
    # - step 2, after one update: Adam's first step is lr * g / (|g| + 1e-8) ~ lr * sign(g), so a
    #   gradient that is rounding noise (|g| ~ u * sum|terms|) may flip sign and move its weight
    #   by up to 2 lr; those weights have g ~ 0, so the loss moves by ~ sum g dw (second order in
    #   the noise) -- bounded loosely by rel 1e-3.
    assert ddp_loss[0] == pytest.approx(one_loss[0], rel=1e-5)  # same samples before any update
    assert ddp_loss[1] == pytest.approx(one_loss[1], rel=1e-3)  # after one synchronised update
    from safetensors.torch import load_file

    a = load_file(str(ck.find_latest(ddp_out) / "trainer" / "unet_live.safetensors"))
    b = load_file(str(ck.find_latest(one_out) / "trainer" / "unet_live.safetensors"))
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Every Adam update has |m_hat / sqrt(v_hat)| <= 1.0014 for t <= 2 (beta1 0.9, beta2 0.999,
    # Cauchy-Schwarz on the bias-corrected moments), so after 2 steps two runs differ by at most
    # 2 steps * 2 * 1.0014 lr = 4.006e-3 whatever the rounding (weight decay adds lr*wd*|dw|,
    # ~1e-8). Most weights agree far closer: a gradient's relative rounding error is
    # ~ log2(N) u * (sum|terms| / |g|) with N ~ 8192 summed terms, ~1e-6 unless the gradient
    # cancels by more than 1e4, and moves the update by lr times that; >99% stay within 1e-5.
    lr = 1e-3
    assert (diff <= 1e-5).float().mean() > 0.99 and diff.max() <= 2 * 2 * 1.0014 * lr + 1e-7


def test_train_export_extract(tmp_path, prepared, monkeypatch):
    """Train through the CLI, export to the released layout, extract features with the checkpoint."""
    from zoomfeat.model import ZoomLDM

    slide, data = prepared
    out = tmp_path / "run"
    hydra_main(
        "train",
        run,
        argv=[
            f"data={data}",
            f"out_dir={out}",
            "batch_size=2",
            "checkpoint_every=1",
            "keep_checkpoints=1",
            *COMMON,
        ],
    )
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")] == [
        "step-00000002"
    ]
    assert not (tmp_path / "outputs").exists()
    latest = out / "checkpoints" / "latest"
    # export through the CLI, read back identically
    exported = tmp_path / "official" / "weights.ckpt"
    hydra_main("train", run, argv=[f"out_dir={out}", f"export={exported}"])
    a, b = ZoomLDM.from_pretrained(latest), ZoomLDM.from_official(exported)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # a re-run of the finished training resumes and has nothing to do
    again = hydra_main("train", run, argv=[f"data={data}", f"out_dir={out}", "batch_size=2", *COMMON])
    assert again["start_step"] == 2 and again["step"] == 2
    # the checkpoint drives feature extraction
    from zoomfeat.bags import bag_path, open_bag
    from zoomfeat.extract import run as extract_run

    feats = tmp_path / "features"
    hydra_main(
        "extract",
        extract_run,
        argv=[
            str(slide),
            f"out_dir={feats}",
            "model=tiny",
            "encoder=tiny",
            f"model.checkpoint={latest}",
            "num_workers=0",
            "progress=false",
        ],
    )
    bag = open_bag(bag_path(feats, "zoomldm_fused", "train_cli"))
    assert len(bag.features) > 0
    assert (
        bag.attrs["model_checkpoint_id"] == str(latest)
        and bag.attrs["model_checkpoint_hash"] == a.checkpoint_hash
    )


def _one_line_error(capsys, argv: list[str], entry: str = "train") -> str:
    """Run the entry point; it must exit 2 and print exactly one line, no stack trace."""
    with pytest.raises(SystemExit) as exc:
        hydra_main(entry, run, argv=argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"zoomfeat {entry}: error: ")
    return err


def test_train_cli_errors(tmp_path, monkeypatch, prepared, capsys):
    monkeypatch.delenv("ZOOMFEAT_DEBUG", raising=False)
    assert "no training data: pass data=DIR" in _one_line_error(capsys, [f"out_dir={tmp_path}", *COMMON])
    err = _one_line_error(capsys, [f"data={tmp_path / 'nope'}", f"out_dir={tmp_path}", *COMMON])
    assert "does not exist; prepare it with `python -m zoomfeat.prepare" in err
    # unknown keys are refused with the known ones (a plain typo is refused by Hydra itself)
    err = _one_line_error(capsys, [f"data={tmp_path}", f"out_dir={tmp_path}", "+stpes=3", *COMMON])
    assert "unknown setting 'stpes'; known keys: inputs, data, out_dir" in err
    err = _one_line_error(capsys, [f"data={tmp_path}", f"out_dir={tmp_path}", "+ema.decy=0.5", *COMMON])
    assert "unknown setting 'ema.decy'; known keys under ema: decay, warmup" in err
    # data prepared with another VQ than the model being trained (init of another tiny model)
    from zoomfeat.model import ZoomLDM

    other = ZoomLDM.from_config("tiny", seed=5).save_pretrained(tmp_path / "other")
    _, data = prepared
    err = _one_line_error(capsys, [f"data={data}", f"out_dir={tmp_path / 'o'}", f"init={other}", *COMMON])
    assert "encoded with another VQ autoencoder" in err
    # ZOOMFEAT_DEBUG=1 shows the exception itself
    monkeypatch.setenv("ZOOMFEAT_DEBUG", "1")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    from zoomfeat.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="no training data"):
        hydra_main("train", run, argv=[f"out_dir={tmp_path}", *COMMON])
