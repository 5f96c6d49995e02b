"""The wheel ships every subpackage, the Hydra configs and the demo slide."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_contains_configs_and_all_subpackages(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("zoomfeat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in sorted((REPO / "zoomfeat" / "conf").rglob("*.yaml")):
        assert f"zoomfeat/conf/{yaml.relative_to(REPO / 'zoomfeat' / 'conf').as_posix()}" in names, yaml
    for init in sorted((REPO / "zoomfeat").rglob("*.py")):
        assert f"zoomfeat/{init.relative_to(REPO / 'zoomfeat').as_posix()}" in names, init
    assert "zoomfeat/data/CMU-1-Small-Region.svs" in names


def test_config_dir_from_source_checkout():
    from zoomfeat.runtime.resources import config_dir

    assert config_dir() == REPO / "zoomfeat" / "conf"
