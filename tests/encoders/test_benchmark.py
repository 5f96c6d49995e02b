"""benchmarks/model_forward.py --encoders: one throughput line per tile encoder (tiny: seconds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model_forward.py"


def _main():
    spec = importlib.util.spec_from_file_location("model_forward", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_encoder_throughput_line(capsys):
    rows = _main()(
        [
            "--components",
            "--encoders",
            "tiny",
            "--batch",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
        ]
    )
    (row,) = rows
    assert row["component"] == "enc:tiny" and row["embed_dim"] == 32 and row["images_per_s"] > 0
    assert row["gflop_per_image"] == pytest.approx(0.03, abs=0.01)  # the registry's count
    assert "enc:tiny" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _main()(["--components", "--encoders", "virchow"])
