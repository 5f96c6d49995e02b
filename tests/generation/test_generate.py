"""``python -m zoomfeat.generate`` end to end on the CPU with the tiny model and the CMU slide.

The tiny model is random: its images show the machinery (tiling, constraint, blending, TIFF),
not biology. Steps are cut to the minimum (S = 1, K = 1) and the large decode uses a window
stride of 64 so the tests stay within the CPU budget; the full defaults are what ``dry_run``
reports (docs/generation.md, "Costs").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoomfeat.cli import hydra_main
from zoomfeat.generate import run


@pytest.fixture(scope="module")
def tiny_args(golden_dir):
    return [
        "model=tiny",
        f"model.checkpoint={golden_dir / 'zoomldm_tiny.ckpt'}",
        "encoder=tiny",
        "device=cpu",
        "progress=false",
    ]


def test_dry_run_4096_matches_spec(capsys, tmp_path):
    summary = hydra_main(
        "generate",
        run,
        argv=[
            "mode=large",
            "region.mag=1.25x",
            "dry_run=true",
            "large.postprocess=true",
            f"out_dir={tmp_path}",
        ],
    )
    out = capsys.readouterr().out
    assert "4096x4096 px" in out and "UNet evals 215,080" in out and "VQ decodes 51,220" in out
    assert "VQ encodes 102,400" in out and "UNet evals 44,652" in out
    c = summary["counts"]
    assert (
        c["unet"] == 215_080 + 44_652
        and c["vq_decode"] == 51_220 + 2 * 3_721 + 1
        and c["vq_encode"] == 102_400
    )
    assert abs(summary["flops"] - 1.30e17) / 1.30e17 < 0.01  # docs/generation.md "Costs": ~1.30e17


@pytest.mark.parametrize(
    "mag,e,x0,y0",
    [
        ("10x", 2, 900, 1200),  # 512x512 px at 20x under a 10x guide
        ("5x", 4, 700, 1000),  # 1024x1024 px at 20x under a 5x guide (~1026 px of the 2220x2967 slide)
    ],
)
def test_large_image_guided_by_a_cmu_region(cmu_slide, tiny_args, tmp_path, mag, e, x0, y0):
    """An e x e large image (e = 2, 4) guided by a region of the CMU slide: PNG and a pyramidal
    TIFF that openslide reopens (every level equal to the 2x box pyramid of the PNG), the
    references, and exactly the planned model calls."""
    import openslide

    from zoomfeat.generation.tiff import pyramid

    out = tmp_path / "large"
    summary = hydra_main(
        "generate",
        run,
        argv=[
            str(cmu_slide),
            "mode=large",
            f"region.mag={mag}",
            f"region.x0={x0}",
            f"region.y0={y0}",
            "large.stride=1000",
            "large.n_steps=1",
            "large.batch_size=16",
            "large.decode_window_stride=64",
            f"out_dir={out}",
            *tiny_args,
        ],
    )
    files = summary["outputs"]
    side = 256 * e
    img = np.asarray(Image.open(files["png"]))
    assert img.shape == (side, side, 3) and img.std() > 0
    osr = openslide.OpenSlide(files["tiff"])
    levels = pyramid(img)
    assert osr.level_count == len(levels) == {2: 2, 4: 3}[e]
    for k, ref in enumerate(levels):
        assert osr.level_dimensions[k] == (ref.shape[1], ref.shape[0])
        assert np.array_equal(np.asarray(osr.read_region((0, 0), k, osr.level_dimensions[k]))[..., :3], ref)
    assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    assert Image.open(files["guide_reference"]).size == (256, 256)
    assert Image.open(files["guide_generated"]).size == (256, 256)
    assert Image.open(files["reference_20x"]).size == (side, side)
    # the run made exactly the planned calls: S = 1, K = 1: the guide's model_pred + 3 per tile
    # (x0hat, and one finite-difference pair), each a guided pair of UNet calls; decodes: the
    # guide + every tile in the constraint, (e * 64 / 64)^2 windows at stride 64, the guide image;
    # encodes: the finite-difference pair of every tile.
    planned = {
        k: sum(v[k] for v in summary["planned_counts"].values()) for k in ("unet", "vq_decode", "vq_encode")
    }
    assert summary["counts"]["unet"] == planned["unet"] == 2 * (1 + 3 * e * e)
    assert summary["counts"]["vq_decode"] == planned["vq_decode"] == (1 + e * e) + e * e + 1
    assert summary["counts"]["vq_encode"] == planned["vq_encode"] == 2 * e * e


def test_superres_of_a_cmu_5x_tile(cmu_slide, tiny_args, tmp_path):
    summary = hydra_main(
        "generate",
        run,
        argv=[
            str(cmu_slide),
            "mode=superres",
            "region.mag=5x",
            "region.x0=700",
            "region.y0=1000",
            "superres.inversion_steps=1",
            "superres.stride=1000",
            "superres.n_steps=1",
            "superres.batch_size=16",
            "large.decode_window_stride=64",
            "large.tiff=false",
            f"out_dir={tmp_path}",
            *tiny_args,
        ],
    )
    files = summary["outputs"]
    assert np.asarray(Image.open(files["png"])).shape == (1024, 1024, 3)
    assert Image.open(files["input"]).size == (256, 256)
    # S = 1, K = 1 (one constraint iteration per tile, as super-resolution, cut from K = 5): 16 tiles x
    # (1 + 2K) model_pred, each a guided pair of UNet calls, + 1 inversion step (forward and
    # backward); decodes: one per tile and iteration + 16 windows (stride 64); encodes: the
    # finite-difference pair per tile and iteration + the input image
    c = summary["counts"]
    planned = {k: sum(v[k] for v in summary["planned_counts"].values()) for k in c}
    assert c == planned
    assert c["unet_backward"] == 1 and c["model_pred"] == 16 * 3 and c["unet"] == 2 * 16 * 3 + 1
    assert c["vq_decode"] == 16 + 16 and c["vq_encode"] == 16 * 2 + 1


def test_patches_from_slide_and_from_cdm(cmu_slide, tiny_args, tmp_path, gen_golden):
    summary = hydra_main(
        "generate",
        run,
        argv=[
            str(cmu_slide),
            "mode=patch",
            "region.mag=5x",
            "region.x0=700",
            "region.y0=1000",
            "patch.count=1",
            "patch.steps=2",
            f"out_dir={tmp_path / 'slide'}",
            *tiny_args,
        ],
    )
    assert np.asarray(Image.open(summary["outputs"]["patch0"])).shape == (256, 256, 3)
    assert Image.open(summary["outputs"]["reference"]).size == (256, 256)
    assert summary["counts"]["unet"] == 2 * 1 * 3  # PLMS: steps + 1 calls on 2B
    from safetensors.torch import save_file

    sd = {k.removeprefix("g7_dit."): v for k, v in gen_golden.items() if k.startswith("g7_dit.")}
    save_file(sd, str(tmp_path / "cdm.safetensors"))
    summary = hydra_main(
        "generate",
        run,
        argv=[
            "mode=patch",
            "patch.source=cdm",
            f"cdm.checkpoint={tmp_path / 'cdm.safetensors'}",
            "cdm.variant=tiny",
            "cdm.respacing=5",
            "cdm.mag=2.5x",
            "patch.count=1",
            "patch.steps=2",
            f"out_dir={tmp_path / 'cdm'}",
            *tiny_args,
        ],
    )
    assert summary["counts"]["dit"] == 5 and np.asarray(Image.open(summary["outputs"]["patch0"])).shape == (
        256,
        256,
        3,
    )


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["mode=paint"], "mode='paint'"),
        (["mode=large", "region.mag=20x", "dry_run=true"], "region.mag"),
        (["mode=large", "large.n_steps=many", "dry_run=true"], "large.n_steps"),
        (
            ["mode=patch", "model.checkpoint=none", "allow_random_weights=true", "device=cpu", "model=tiny"],
            "no slide given",
        ),
    ],
)
def test_user_errors_are_one_line(argv, msg, capsys, tmp_path):
    with pytest.raises(SystemExit) as ex:
        hydra_main("generate", run, argv=[*argv, f"out_dir={tmp_path}"])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoomfeat generate: error:") and msg in err[0]


def test_layers_allow_generation():
    import zoomfeat.generation.workflow  # noqa: F401  (imports only model/slide/encoders/runtime)

    assert torch.__version__


@pytest.fixture()
def restore_threads():
    """cdm_train.threads=1 sets this process's torch threads: put them back for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cdm_train_args(data, out, tiny_args) -> list[str]:
    return [
        "mode=cdm_train",
        f"cdm_train.data={data}",
        "cdm.variant=tiny",
        "cdm_train.batch_size=4",
        "cdm_train.log_every=1",
        "cdm_train.lr=1e-3",
        "cdm_train.threads=1",  # every process, in-process runs and torchrun's ranks alike
        f"out_dir={out}",
        *tiny_args,
    ]


def test_cdm_training_on_prepared_shards_resumes_and_samples(
    tmp_path, tiny_args, cdm_shards, restore_threads
):
    """Train 2 steps, resume to 3 (the trainer's checkpoint directories), then sample a patch
    conditioned by the trained CDM's EMA weights."""
    from zoomfeat.generation.cdm import load_cdm
    from zoomfeat.runtime import checkpoints as ck

    out = tmp_path / "cdm"
    common = _cdm_train_args(cdm_shards, out, tiny_args)
    first = hydra_main("generate", run, argv=[*common, "cdm_train.steps=2"])
    assert first["step"] == 2 and first["tiles"] == {0: 5, 2: 3, 4: 2}
    again = hydra_main("generate", run, argv=[*common, "cdm_train.steps=3", "cdm_train.checkpoint_every=1"])
    assert (again["start_step"], again["step"]) == (2, 3)  # resumed from checkpoints/latest
    latest = ck.find_latest(out)
    assert latest.name == "step-00000003" and again["ema"] == str(latest / "cdm_ema.safetensors")
    state = ck.read_state(latest)
    assert state["model"] == "DiT-TINY" and state["data"] == {"m0": 5, "m2": 3, "m4": 2}
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]
    cdm = load_cdm(again["ema"], "tiny", in_channels=64)
    assert cdm(torch.randn(1, 64, 65), torch.tensor([5]), torch.tensor([2])).shape == (1, 128, 65)
    summary = hydra_main(
        "generate",
        run,
        argv=[
            "mode=patch",
            "patch.source=cdm",
            f"cdm.checkpoint={out}",  # a cdm_train run: its latest checkpoint's EMA DiT
            "cdm.variant=tiny",
            "cdm.respacing=2",
            "cdm.mag=5x",
            "patch.count=1",
            "patch.steps=1",
            f"out_dir={tmp_path / 'patch'}",
            *tiny_args,
        ],
    )
    assert summary["counts"]["dit"] == 2
    assert np.asarray(Image.open(summary["outputs"]["patch0"])).shape == (256, 256, 3)


def test_cdm_training_ddp_two_processes_gloo_matches_one_process(
    tmp_path, tiny_args, cdm_shards, restore_threads
):
    """torchrun --nproc_per_node=2 (gloo): 2 ranks x 2 samples train what one process does with
    the global batch of 4 (same sample numbers; DDP averages the gradients)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from zoomfeat.runtime import checkpoints as ck

    repo = Path(__file__).resolve().parents[2]
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "zoomfeat.generate", *_cdm_train_args(cdm_shards, ddp, tiny_args), "cdm_train.steps=2"]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    printed = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"cdm_train"')]
    assert len(printed) == 1 and printed[0]["cdm_train"]["world_size"] == 2  # rank 0 alone prints
    state = ck.read_state(ck.find_latest(ddp))
    assert (state["step"], state["world_size"], state["global_batch"], state["samples_seen"]) == (2, 2, 4, 8)
    hydra_main("generate", run, argv=[*_cdm_train_args(cdm_shards, one, tiny_args), "cdm_train.steps=2"])

    def losses(out):
        return [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]

    # Not bitwise: each rank averages its 2 losses and the all-reduce averages the ranks, vs one
    # mean of 4; the summarizer makes targets in batches of another size. Float32 (u = 6e-8):
    # - step 1, same weights and samples: each loss is a mean over 64 x 65 elements (log2(4160) u
    #   ~ 12 u in the order of summation) plus target rounding of a few ulp (the stream test):
    #   relative ~1e-6; rel 1e-5 is 10x that.
    # - step 2, after one AdamW update: Adam's first step is ~ lr * sign(g), so a gradient that is
    #   rounding noise may flip sign and move its weight by 2 lr; such weights have g ~ 0, so the
    #   loss moves at second order in the noise: loosely rel 1e-3.
    ld, lo = losses(ddp), losses(one)
    assert ld[0] == pytest.approx(lo[0], rel=1e-5) and ld[1] == pytest.approx(lo[1], rel=1e-3)
    a = load_file(str(ck.find_latest(ddp) / "trainer" / "model_live.safetensors"))
    b = load_file(str(ck.find_latest(one) / "trainer" / "model_live.safetensors"))
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Each AdamW update has |m_hat / sqrt(v_hat)| <= 1.0014 for t <= 2 (beta1 0.9, beta2 0.999,
    # Cauchy-Schwarz on the bias-corrected moments): after 2 steps the runs differ by at most
    # 2 steps * 2 * 1.0014 lr whatever the rounding (weight decay is 0). Most agree far closer:
    # a gradient's rounding error is ~ log2(N) u relative unless it cancels by orders of magnitude.
    lr = 1e-3
    assert (diff <= 1e-5).float().mean() > 0.99 and diff.max() <= 2 * 2 * 1.0014 * lr + 1e-7
