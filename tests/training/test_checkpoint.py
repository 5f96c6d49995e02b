"""Atomic training checkpoints: latest pointer, pruning, and runs killed mid-checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from zoomfeat.runtime import checkpoints as ck


def _writer(payload: str):
    def write(tmp):
        (tmp / "weights.bin").write_text(payload)
        (tmp / "trainer").mkdir()
        (tmp / "trainer" / "state.json").write_text(json.dumps({"payload": payload}))

    return write


def test_write_latest_and_prune(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        ck.write_checkpoint(root, step, _writer(f"s{step}"), keep=2)
    assert [s for s, _ in ck.list_checkpoints(root)] == [3, 4]
    assert (root / "latest").is_symlink() and ck.latest_name(root) == "step-00000004"
    assert ck.find_latest(tmp_path) == root / "step-00000004"
    assert ck.resolve_checkpoint(root / "latest").name == "step-00000004"
    assert ck.resolve_checkpoint(tmp_path) == root / "step-00000004"
    assert ck.read_state(root / "latest") == {"payload": "s4"}
    # the same step again replaces it
    ck.write_checkpoint(root, 4, _writer("again"), keep=2)
    assert ck.read_state(ck.find_latest(root)) == {"payload": "again"}
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_failed_write_leaves_latest_alone(tmp_path):
    root = tmp_path / "checkpoints"
    ck.write_checkpoint(root, 1, _writer("good"))

    def broken(tmp):
        (tmp / "weights.bin").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.write_checkpoint(root, 2, broken)
    assert ck.find_latest(root) == root / "step-00000001"
    with pytest.raises(RuntimeError, match="did not produce trainer/state.json"):
        ck.write_checkpoint(root, 3, lambda tmp: None)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001"]


@pytest.mark.parametrize("files_before_kill", [0, 1, 2])
def test_kill_mid_checkpoint_never_corrupts_latest(tmp_path, files_before_kill):
    """A process SIGKILLed while writing checkpoint 2 (after 0, 1 or 2 of its files) leaves
    ``latest`` at checkpoint 1; the next run removes the partial directory."""
    root = tmp_path / "checkpoints"
    ck.write_checkpoint(root, 1, _writer("one"))
    script = textwrap.dedent(
        f"""
        import os, signal, sys, json
        sys.path.insert(0, {os.getcwd()!r})
        from zoomfeat.runtime import checkpoints as ck
        def write(tmp):
            names = ["weights.bin", "more.bin", "trainer/state.json"]
            (tmp / "trainer").mkdir()
            for k, name in enumerate(names):
                if k == {files_before_kill}:
                    os.kill(os.getpid(), signal.SIGKILL)
                (tmp / name).write_text(json.dumps({{"payload": "two"}}))
        ck.write_checkpoint({str(root)!r}, 2, write)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert any(p.name.startswith(".step-00000002.tmp-") for p in root.iterdir())
    assert ck.find_latest(root) == root / "step-00000001"
    assert ck.read_state(root / "latest") == {"payload": "one"}
    removed = ck.clean_partial(root)
    assert [p.name.split(".")[1] for p in removed] == ["step-00000002"]
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001"]


def test_kill_between_swap_and_rename_restores_old(tmp_path):
    root = tmp_path / "checkpoints"
    ck.write_checkpoint(root, 5, _writer("five"))
    # what a kill between the two renames of a same-step rewrite leaves behind
    os.replace(root / "step-00000005", root / ".step-00000005.old-123")
    assert ck.find_latest(root) is None
    ck.clean_partial(root)
    assert ck.read_state(ck.find_latest(root)) == {"payload": "five"}


def test_latest_pointing_at_incomplete_falls_back(tmp_path):
    root = tmp_path / "checkpoints"
    ck.write_checkpoint(root, 1, _writer("one"))
    ck.write_checkpoint(root, 2, _writer("two"))
    (root / "step-00000002" / "trainer" / "state.json").unlink()
    with pytest.warns(UserWarning, match="not a complete checkpoint"):
        assert ck.find_latest(root) == root / "step-00000001"
    with pytest.raises(FileNotFoundError, match="no complete training checkpoint"):
        ck.resolve_checkpoint(tmp_path / "elsewhere")


def _real_writer(step: int):
    """A checkpoint with real files of each kind resume reads: safetensors, torch.save zip, JSON."""
    import torch
    from safetensors.torch import save_file

    def write(tmp):
        (tmp / "trainer").mkdir()
        save_file({"w": torch.full((64, 64), float(step))}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"step": step}))
        torch.save({"state": {0: {"exp_avg": torch.ones(128)}}}, tmp / "trainer" / "optimizer.pt")
        (tmp / "trainer" / "state.json").write_text(json.dumps({"step": step}))

    return write


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    ("damaged_file", "reader_error"),
    [
        ("model.safetensors", "incomplete metadata|MetadataIncompleteBuffer|invalid"),
        ("trainer/optimizer.pt", "PytorchStreamReader failed"),
    ],
)
def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, damaged_file, reader_error):
    """A truncated file in the newest checkpoint (what a full disk or a cut copy leaves): the real
    reader fails on it, the header check finds it, and resume uses the checkpoint before with a
    warning naming both; an explicitly named damaged step is refused in one line."""
    import torch
    from safetensors.torch import load_file

    from zoomfeat.runtime import checkpoints as rck
    from zoomfeat.runtime.errors import WeightsError

    root = tmp_path / "checkpoints"
    for step in (1, 2):
        rck.write_checkpoint(root, step, _real_writer(step))
    newest = root / "step-00000002"
    assert rck.checkpoint_damage(newest) is None and rck.find_latest(tmp_path) == newest
    _truncate(newest / damaged_file)
    with pytest.raises(Exception, match=reader_error):  # the damage is real: the loader itself fails
        if damaged_file.endswith(".safetensors"):
            load_file(str(newest / damaged_file))
        else:
            torch.load(newest / damaged_file, weights_only=True)
    why = rck.checkpoint_damage(newest)
    assert why is not None and damaged_file.split("/")[-1] in why and ("truncated" in why or "archive" in why)
    with pytest.warns(
        UserWarning, match=r"step-00000002 is damaged .*; using step-00000001, the newest usable"
    ):
        assert rck.find_latest(tmp_path) == root / "step-00000001"
    with pytest.warns(UserWarning, match="step-00000002 is damaged"):
        assert rck.resume_source(tmp_path, "auto") == root / "step-00000001"
    with pytest.raises(WeightsError, match=r"step-00000002 is damaged .*pass an earlier step"):
        rck.resolve_checkpoint(newest)
    with pytest.raises(WeightsError, match=r"step-00000002 is damaged"):
        rck.resolve_checkpoint(root / "latest")


def test_no_usable_checkpoint_is_refused_in_one_line(tmp_path):
    from zoomfeat.runtime import checkpoints as rck
    from zoomfeat.runtime.errors import WeightsError

    root = tmp_path / "checkpoints"
    for step in (1, 2):
        rck.write_checkpoint(root, step, _real_writer(step))
    _truncate(root / "step-00000002" / "model.safetensors", keep=0.99)  # a few bytes short
    (root / "step-00000001" / "config.json").write_text('{"step": ')  # cut JSON
    with pytest.raises(WeightsError) as err:
        rck.resume_source(tmp_path, "auto")
    msg = str(err.value)
    assert "\n" not in msg and "no usable training checkpoint" in msg
    assert "step-00000002: model.safetensors is truncated" in msg
    assert (
        "step-00000001: config.json is not valid JSON" in msg and "move the damaged step directories" in msg
    )
    # a file longer than its header says is damaged too (safetensors refuses it)
    with open(root / "step-00000002" / "model.safetensors", "ab") as f:
        f.write(b"\0" * 4096)
    assert "too long" in rck.checkpoint_damage(root / "step-00000002")
