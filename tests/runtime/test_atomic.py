"""zoomfeat.runtime.atomic: files and directories appear complete under their final name, or not at all."""

from __future__ import annotations

import os
import subprocess

import pytest

from zoomfeat.runtime.atomic import atomic_dir, atomic_path, atomic_write_text, ensure_dir, tmp_name
from zoomfeat.runtime.errors import OutputError


def test_atomic_path_publishes_only_on_success(tmp_path):
    target = tmp_path / "sub" / "bag.h5"
    with atomic_path(target) as tmp:
        assert tmp == tmp_name(target) and tmp.parent == target.parent
        tmp.write_bytes(b"done")
        assert not target.exists()  # nothing under the final name while writing
    assert target.read_bytes() == b"done"
    assert not tmp_name(target).exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_atomic_dir_replaces_a_directory_whole(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(ValueError):
        with atomic_dir(final) as tmp:
            (tmp / "c.txt").write_text("3")
            raise ValueError("killed")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_output_dir_that_is_a_file_is_one_clear_error(tmp_path):
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(OutputError, match=r"out: the output directory is a file"):
        ensure_dir(f)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can write into: permission bits, or for root a read-only tmpfs mount."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o500)
        yield ro
        ro.chmod(0o700)
        return
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True
    ).returncode:
        pytest.skip("root cannot mount a read-only tmpfs here")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_read_only_output_dir_is_one_clear_error(read_only_dir):
    with pytest.raises(OutputError, match="cannot create the output directory.*choose a writable location"):
        ensure_dir(read_only_dir / "bags")
    with pytest.raises(OutputError, match="not writable"):
        ensure_dir(read_only_dir)
