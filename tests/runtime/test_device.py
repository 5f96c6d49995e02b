"""zoomfeat.runtime.device: one resolution of device, precision and autocast for every entry point."""

from __future__ import annotations

import pytest
import torch

from zoomfeat.runtime.device import autocast, resolve_device, resolve_precision
from zoomfeat.runtime.errors import ConfigError


def test_auto_is_cuda_then_mps_then_cpu():
    dev = resolve_device("auto")
    if torch.cuda.is_available():
        assert dev.type == "cuda" and dev.index is not None
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        assert dev.type == "mps"
    else:
        assert dev == torch.device("cpu")
    assert resolve_device(None) == dev


def test_explicit_cpu_and_device_objects_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_is_a_config_error_that_says_what_to_do():
    with pytest.raises(ConfigError, match="CUDA is not available.*device=cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("cuda:3")


def test_nonsense_device_is_named():
    with pytest.raises(ConfigError, match="'gpu0' is not a device"):
        resolve_device("gpu0")


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("BF16", cpu) == "bf16"
    assert resolve_precision("fp16", cpu) == "fp16"  # inference runs fp16 on the CPU
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device for training"):
        resolve_precision("fp16", cpu, training=True)
    with pytest.raises(ConfigError, match="use one of fp32, bf16, fp16"):
        resolve_precision("int8", cpu)


def test_autocast_changes_matmul_dtype_only_when_asked():
    cpu = torch.device("cpu")
    a = torch.randn(4, 4)
    with autocast(cpu, "fp32"):
        assert (a @ a).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with pytest.raises(ConfigError):
        autocast(cpu, "fp64")
