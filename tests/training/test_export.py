"""Export of a training checkpoint to the released layout, and loading its EMA / live weights."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from zoomfeat.runtime import checkpoints as ck
from zoomfeat.training.config import SampleConfig, TrainConfig
from zoomfeat.training.export import export_official, load_checkpoint_model
from zoomfeat.training.model_init import load_init
from zoomfeat.training.trainer import train


def test_export_roundtrip_and_init_from_export(tmp_path, data):
    from zoomfeat.model import ZoomLDM

    out = tmp_path / "run"
    train(
        TrainConfig(
            data=str(data),
            out_dir=str(out),
            model="tiny",
            steps=2,
            batch_size=2,
            num_workers=0,
            device="cpu",
            lr=1e-3,
            warmup_steps=2,
            checkpoint_every=2,
            progress=False,
            samples=SampleConfig(enabled=False),
        )
    )
    step = ck.find_latest(out)
    ema = load_file(str(step / "trainer" / "unet_ema.safetensors"))
    live = load_file(str(step / "trainer" / "unet_live.safetensors"))
    model = ZoomLDM.from_pretrained(step)
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
    # init from the export starts from its EMA weights
    init = load_init(str(path), "tiny")
    assert all(torch.equal(init.unet.state_dict()[k], v) for k, v in ema.items())
