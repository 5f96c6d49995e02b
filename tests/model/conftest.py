"""Fixtures for the model tests: golden tensors, the tiny official checkpoint loaded with EMA weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from zoomfeat.model import ZoomLDM

# Golden README tolerances (atol).
TOL_XT = 1e-6
TOL_COND = 2e-5
TOL_EPS = 5e-5
TOL_VQ_PREQUANT = 5e-5
TOL_VQ_DECODED = 2e-4
TOL_SAMPLE = 1e-3


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


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
def full_meta() -> ZoomLDM:
    """Full-size zoomldm_brca built on the meta device (no memory allocated)."""
    return ZoomLDM.from_config("zoomldm_brca", device="meta")
