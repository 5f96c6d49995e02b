"""``python -m zoomfeat.prepare``: the Hydra entry point on a real (synthetic) slide."""

from __future__ import annotations

import pytest

from zoomfeat.cli import hydra_main
from zoomfeat.prepare import run
from zoomfeat.training.shards import ShardIndex, read_record

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_prepares_and_resumes(tmp_path, synthetic_slide_factory):
    slide = synthetic_slide_factory(
        "cli_prep", width=1024, height=1024, mpp=0.5, levels=2, seed=7, tissue_fraction=0.5
    )
    out = tmp_path / "data"
    # the tiny model and encoder need no weights and no allow_random_weights (as in extract)
    argv = [
        str(slide),
        f"out_dir={out}",
        "model=tiny",
        "encoder=tiny",
        "mags=[5x,2.5x]",
        "num_workers=0",
        "progress=false",
    ]
    with pytest.warns(UserWarning, match="smaller than one 2.5x tile"):
        summary = hydra_main("prepare", run, argv=argv)
    assert summary["done"] == ["cli_prep"] and summary["tiles"] == {"5x": 1, "2.5x": 0}
    assert ShardIndex.load(out).counts() == {2: 1}
    assert set(read_record(out, "cli_prep")["mags"]) == {"2", "3"}
    assert not (tmp_path / "outputs").exists() and (out / ".hydra").is_dir()
    again = hydra_main("prepare", run, argv=argv)
    assert again["skipped"] == ["cli_prep"] and not again["done"]


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the entry point; it must exit 2 and print exactly one line, no stack trace."""
    with pytest.raises(SystemExit) as exc:
        hydra_main("prepare", run, argv=argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("zoomfeat prepare: error: ")
    return err


def test_cli_errors(tmp_path, synthetic_slide_factory, monkeypatch, capsys):
    monkeypatch.delenv("ZOOMFEAT_DEBUG", raising=False)
    assert "no slides given" in _one_line_error(capsys, [f"out_dir={tmp_path}"])
    assert "does not exist" in _one_line_error(capsys, [str(tmp_path / "no_such_dir"), f"out_dir={tmp_path}"])
    (tmp_path / "empty").mkdir()
    assert "no slides found" in _one_line_error(capsys, [str(tmp_path / "empty"), f"out_dir={tmp_path}"])
    err = _one_line_error(capsys, [str(tmp_path / "empty"), "+tisue.level=1", f"out_dir={tmp_path}"])
    assert "unknown setting 'tisue'; known keys: inputs, out_dir, mags" in err
    err = _one_line_error(capsys, [str(tmp_path / "empty"), "+shard.idx=1", f"out_dir={tmp_path}"])
    assert "unknown setting 'shard.idx'; known keys under shard: index, count" in err
    slide = synthetic_slide_factory("cli_prep_err", width=512, height=512, mpp=0.5, levels=1)
    err = _one_line_error(capsys, [str(slide), f"out_dir={tmp_path}", "encoder=tiny"])
    assert "encoder=tiny gives 32-d embeddings but model=zoomldm_brca is conditioned on 1024-d" in err


def test_cli_bad_slide_is_skipped_and_fails_the_run(tmp_path, synthetic_slide_factory):
    good = synthetic_slide_factory(
        "cli_prep_good", width=1024, height=1024, mpp=0.5, levels=2, seed=8, tissue_fraction=0.6
    )
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide at all")
    out = tmp_path / "data"
    argv = [
        str(bad),
        str(good),
        f"out_dir={out}",
        "model=tiny",
        "encoder=tiny",
        "mags=[5x]",
        "num_workers=0",
        "progress=false",
    ]
    with pytest.raises(SystemExit) as exc:
        hydra_main("prepare", run, argv=argv)
    assert exc.value.code == 1
    assert set(read_record(out, "cli_prep_good")["mags"]) == {"2"} and read_record(out, "broken") is None
