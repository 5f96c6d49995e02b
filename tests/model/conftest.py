"""Fixtures for the model tests: golden tensors, the tiny official checkpoint loaded with EMA weights.

Golden comparisons use the float32-rounding bounds of :mod:`tests.model.tolerances`.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from zoomfeat.model import ZoomLDM

from .tolerances import widest_fan_in

#: the whole UNet is D = 26 sequential blocks (25 official blocks + the output block ``out``)
UNET_DEPTH = 26


def unet_fan_in(model: ZoomLDM) -> int:
    """Widest dot product of the UNet (tolerances.py): a decoder conv on [h, skip] (tiny: 128 ch
    * 3 * 3 = 1152); the self-attention at 32x32 (attention starts at downsampling 2) sums over
    1024 tokens, less."""
    return widest_fan_in(model.unet, tokens=(model.latent_size // 2) ** 2)


#: VQ encoder blocks in sequence: conv_in, 3 resnets (1 per level), 2 downsamplers, mid (resnet,
#: attention, resnet), conv_out, quant_conv
VQ_ENCODER_DEPTH = 11
#: VQ decoder blocks in sequence: post_quant_conv, conv_in, mid (resnet, attention, resnet),
#: 6 resnets (2 per level), 2 upsamplers, conv_out
VQ_DECODER_DEPTH = 14


def vq_fan_in(model: ZoomLDM) -> int:
    """Widest dot product of the VQ: its mid-block attention sums over the 64 x 64 = 4096 latent
    positions (its convs: at most 128 ch * 3 * 3 = 1152)."""
    return widest_fan_in(model.vq, tokens=model.latent_size**2)


def summarizer_depth(model: ZoomLDM) -> int:
    """Summarizer blocks in sequence: dim_reduce, (attention, MLP) per layer, final_proj."""
    return 2 + 2 * model.config["summarizer"]["num_layers"]


def summarizer_fan_in(model: ZoomLDM) -> int:
    """Widest dot product of the summarizer: its MLP (tiny: 128), attention over 65 tokens."""
    return widest_fan_in(model.summarizer, tokens=65)


@pytest.fixture(scope="session")
def golden_io(golden_dir) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "zoomldm_tiny_io.safetensors"))


@pytest.fixture(scope="session")
def golden_ckpt(golden_dir):
    return golden_dir / "zoomldm_tiny.ckpt"


@pytest.fixture(scope="session")
def golden_model(golden_dir) -> ZoomLDM:
    """The tiny official checkpoint, EMA UNet weights (what the official sampling uses)."""
    return ZoomLDM.from_official(golden_dir / "zoomldm_tiny.ckpt", config=golden_dir / "zoomldm_tiny.yaml")


@pytest.fixture(scope="session")
def tiny_sd(golden_ckpt):
    """The tiny official checkpoint as a flat state_dict (official names and order)."""
    return torch.load(golden_ckpt, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def full_meta() -> ZoomLDM:
    """Full-size zoomldm_brca built on the meta device (no memory allocated)."""
    return ZoomLDM.from_config("zoomldm_brca", device="meta")


def same_weights(a: ZoomLDM, b: ZoomLDM) -> bool:
    """Same state_dict names, order and values (bitwise)."""
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def save_sd(sd, path):
    """torch.save ``sd`` to ``path``; returns ``path``."""
    torch.save(sd, path)
    return path


def load_tiny(path, golden_dir, **kw) -> ZoomLDM:
    """``ZoomLDM.from_official(path)`` with the tiny golden config."""
    return ZoomLDM.from_official(path, config=golden_dir / "zoomldm_tiny.yaml", **kw)
