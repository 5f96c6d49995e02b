"""The suite's own set-up (tests/conftest.py): a disk too full for it is one line, not hundreds of
failed tests."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_disk_too_full_for_the_suite_is_refused_in_one_line(tmpfs):
    disk = tmpfs(1)  # 1 MB free where the temporary directories would go
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={disk / 'bt'}",
         "tests/test_cli.py"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert f"{disk}: 0.0 GB free, the test suite needs about 1.5 GB there for its temporary files" in out
    assert "passed" not in out and not (disk / "bt").exists()  # no test ran, nothing was written
