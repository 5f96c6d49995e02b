"""``python -m zoomfeat.export``: the command line, its config and its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoomfeat.bags import bag_path, write_bag
from zoomfeat.interop import ExportConfig
from zoomfeat.runtime.config import load_config
from zoomfeat.runtime.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _export(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoomfeat.export", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "features"
    attrs = {"patch_size": 256, "patch_size_level0": 257, "level0_magnification": 20.04,
             "target_magnification": 20.0, "overlap": 0, "name": "s1", "level0_width": 2220,
             "level0_height": 2967}  # fmt: skip
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_bag(bag_path(out, "uni_fused", "s1"), features, [[0, 0], [257, 0]], attrs, attrs={"mpp": 0.499})
    return out


def test_command_line_writes_the_mirror_and_says_how_to_use_it(out_dir, tmp_path, monkeypatch):
    proc = _export(str(out_dir), "to=clam", "sets=uni_fused", f"dest={tmp_path / 'm'}")
    assert proc.returncode == 0, proc.stderr
    assert "uni_fused: 1 slide(s)" in proc.stdout and "--embed_dim 3" in proc.stdout
    pt = torch.load(tmp_path / "m" / "uni_fused" / "pt_files" / "s1.pt")
    np.testing.assert_array_equal(pt.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert not (tmp_path / "m" / ".hydra").exists() and not (REPO / ".hydra").exists()
    # default destination: {out_dir}/export/{to}
    from zoomfeat.cli import hydra_main
    from zoomfeat.export import run

    monkeypatch.chdir(tmp_path)
    result = hydra_main("export", run, argv=[str(out_dir), "to=slideflow"])
    assert result.dest == out_dir / "export" / "slideflow"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # Hydra wrote no log or run files here
    assert (out_dir / "export" / "slideflow" / "uni_fused" / "s1.index.npz").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["to=cellprofiler"], "to= must be one of clam, stamp, slideflow"),
        (["to=clam", "sets=conch"], "['conch'] match no feature set"),
        (["to=clam", "tiles=3"], "unknown setting 'tiles'"),
    ],
)
def test_user_errors_are_one_line(out_dir, args, message, capsys, tmp_path, monkeypatch):
    from zoomfeat.cli import hydra_main
    from zoomfeat.export import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        hydra_main("export", run, argv=[str(out_dir), *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoomfeat export: error:") and message in lines[0], lines


def test_missing_directory_and_config_validation(tmp_path):
    proc = _export(str(tmp_path / "typo"), "to=clam")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and len(proc.stderr.splitlines()) == 1
    cfg = load_config(ExportConfig, {"inputs": ["x"], "to": "stamp", "sets": "uni_20x,zoomldm_*"}, "export")
    assert cfg.sets == ["uni_20x", "zoomldm_*"] and cfg.dest is None
    with pytest.raises(ConfigError, match="mpp must be positive"):
        load_config(ExportConfig, {"to": "stamp", "mpp": -1}, "export")
