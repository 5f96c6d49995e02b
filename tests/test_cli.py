import pytest

from zoomfeat.cli import inputs_override, split_argv


def test_split_argv_separates_inputs_from_overrides():
    inputs, hydra_args = split_argv(
        ["a.svs", "dir/", "out_dir=x", "-m", "seed=1,2", "--config-name", "extract", "m.csv"]
    )
    assert inputs == ["a.svs", "dir/", "m.csv"]
    assert hydra_args == ["out_dir=x", "-m", "seed=1,2", "--config-name", "extract"]


def test_inputs_override_quotes_awkward_paths():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    paths = ["/data/my slide's [1].svs", "C:\\x\\y.tif", "a,b=c.ndpi", "odd\\'q\\"]
    override = OverridesParser.create().parse_overrides([inputs_override(paths)])[0]
    assert override.key_or_group == "inputs"
    assert override.value() == paths


def test_user_errors_are_one_line_and_exit_2(capsys, monkeypatch):
    from zoomfeat.cli import report_errors
    from zoomfeat.runtime.errors import InputError

    def task():
        raise InputError("labels.csv: no column 'label'; name it with task.label_col=...")

    monkeypatch.delenv("ZOOMFEAT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        report_errors("bench", task)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "zoomfeat bench: error: labels.csv: no column 'label'; name it with task.label_col=...\n"


def test_debug_shows_the_trace_and_bugs_are_not_hidden(monkeypatch):
    from zoomfeat.cli import report_errors
    from zoomfeat.runtime.errors import ConfigError

    def bad_setting():
        raise ConfigError("x")

    monkeypatch.setenv("ZOOMFEAT_DEBUG", "1")
    with pytest.raises(ConfigError):
        report_errors("extract", bad_setting)
    monkeypatch.delenv("ZOOMFEAT_DEBUG")
    with pytest.raises(ZeroDivisionError):  # not a user error: a bug keeps its trace
        report_errors("extract", lambda: 1 / 0)


def test_a_log_file_on_a_full_disk_adds_no_trace_to_the_error_line(tmpfs, capsys, monkeypatch):
    """A log handler whose file cannot be written (a full disk under Hydra's run record or a
    library's cache) must not print logging's '--- Logging error ---' trace over the one line."""
    import logging

    from zoomfeat.cli import report_errors
    from zoomfeat.runtime.errors import InputError

    disk = tmpfs(1)
    with open(disk / "fill", "wb") as fill, pytest.raises(OSError):  # the disk really fills up
        for _ in range(64):
            fill.write(b"\0" * 65536)
            fill.flush()
    handler = logging.FileHandler(disk / "run.log")
    log = logging.getLogger("zoomfeat.test_full_disk")
    log.addHandler(handler)

    def task():
        log.warning("a record the full disk cannot take " + "x" * 8192)
        raise InputError("slide.svs: the one line")

    monkeypatch.delenv("ZOOMFEAT_DEBUG", raising=False)
    try:
        with pytest.raises(SystemExit) as exc:
            report_errors("extract", task)
    finally:
        log.removeHandler(handler)
        handler.stream = None  # closing would flush into the full disk again
    assert exc.value.code == 2
    assert capsys.readouterr().err == "zoomfeat extract: error: slide.svs: the one line\n"
    assert logging.raiseExceptions  # restored for the rest of the process
    with pytest.raises(OSError):  # the handler really failed: the disk is full
        with open(disk / "more", "wb") as more:
            more.write(b"\0" * 65536)
            more.flush()


def test_existing_paths_with_equals_signs_are_inputs(tmp_path):
    from zoomfeat.cli import config_keys

    odd = tmp_path / "run=3, [a] é"
    odd.mkdir()
    slide = odd / "x=1.svs"
    slide.write_bytes(b"")
    known = config_keys("extract")
    inputs, hydra_args = split_argv([str(slide), str(odd), "out_dir=o", f"mpp={slide}", "seed=1"], known)
    assert inputs == [str(slide), str(odd)]
    assert hydra_args == ["out_dir=o", f"mpp={slide}", "seed=1"]  # a known key stays a setting


def _never(cfg):
    raise AssertionError("the task must not run")


def _one_line(capsys, entry, argv, task=_never):
    """Run ``hydra_main`` in this process; it must stop with exit status 2 and one stderr line."""
    from zoomfeat.cli import hydra_main

    with pytest.raises(SystemExit) as exc:
        hydra_main(entry, task, argv=argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"zoomfeat {entry}: error: "), lines
    return lines[0]


def test_hydra_failures_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ZOOMFEAT_DEBUG", raising=False)
    monkeypatch.delenv("ZOOMFEAT_UNSET_FOR_TEST", raising=False)
    out = f"out_dir={tmp_path / 'o'}"
    cases = {
        "features.timestp=3": "unknown setting 'features.timestp'; known keys under features: timestep, taps, ensemble",
        "foo=1": "unknown setting 'foo'; known keys: allow_random_weights",
        "model=nonexistent": "no config 'model/nonexistent'; available options for model: tiny, zoomldm_brca",
        f"{tmp_path}/a=b.svs": "no such file or directory",
        "features.timestep=[1": "cannot parse 'features.timestep=[1'",
        "--bogus": "unknown option(s) --bogus",
    }
    for arg, text in cases.items():
        assert text in _one_line(capsys, "extract", [out, arg]), arg
    # an interpolation that only Hydra resolves (its run directory): the key and the variable
    line = _one_line(capsys, "extract", ["out_dir=${oc.env:ZOOMFEAT_UNSET_FOR_TEST}"])
    assert "out_dir: environment variable 'ZOOMFEAT_UNSET_FOR_TEST' is not set" in line
    # what the task validates or resolves (the real entry point's task; it stops before any work)
    from zoomfeat.extract import run

    assert "seed: Value 'abc'" in _one_line(capsys, "extract", [out, "seed=abc"], run)
    line = _one_line(capsys, "extract", [out, "seed=${oc.env:ZOOMFEAT_UNSET_FOR_TEST}"], run)
    assert "seed: environment variable 'ZOOMFEAT_UNSET_FOR_TEST' is not set" in line


def test_hydra_write_failures_are_one_line(tmp_path, capsys, monkeypatch):
    """Hydra writes its run record (out_dir/.hydra/<time>/...) before the task runs."""
    monkeypatch.delenv("ZOOMFEAT_DEBUG", raising=False)
    (tmp_path / "afile").write_text("x")
    line = _one_line(capsys, "extract", [f"out_dir={tmp_path / 'afile'}"])
    assert f"{tmp_path / 'afile'}: the output directory is a file, not a directory" in line
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / ".hydra").write_text("x")
    line = _one_line(capsys, "extract", [f"out_dir={tmp_path / 'o2'}"])
    assert f"{tmp_path / 'o2' / '.hydra'}: is a file, not a directory (Hydra writes its run record to" in line
    line = _one_line(capsys, "extract", ["out_dir=/proc/zoomfeat_out"])
    assert "/proc/zoomfeat_out: cannot create the output directory" in line
    # a full disk: Hydra's config.yaml is /dev/full, whose writes fail with ENOSPC
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").symlink_to("/dev/full")
    line = _one_line(capsys, "extract", [f"out_dir={tmp_path / 'o'}", f"hydra.run.dir={run}"])
    assert f"{run}: no space left on the device" in line and "choose another out_dir" in line


def test_hydra_permission_failure_is_one_line(tmp_path, capsys, monkeypatch):
    """out_dir/.hydra not writable: chmod for a normal user; root ignores modes, so an immutable
    directory (chattr +i, which root cannot write either) there."""
    import os
    import subprocess

    monkeypatch.delenv("ZOOMFEAT_DEBUG", raising=False)
    locked = tmp_path / "o" / ".hydra"
    locked.mkdir(parents=True)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("root without chattr +i here: no way to make a directory unwritable")
    else:
        locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError):  # the premise: this directory really is unwritable
            (locked / "probe").mkdir()
        line = _one_line(capsys, "extract", [f"out_dir={tmp_path / 'o'}"])
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o700)
    assert f"{locked}: not writable" in line and "choose another out_dir" in line


def test_flags_after_overrides_and_multirun(tmp_path, capsys):
    from zoomfeat.cli import hydra_main

    seeds = []
    hydra_main("extract", lambda cfg: seeds.append(cfg.seed), argv=[f"out_dir={tmp_path}", "seed=1,2", "-m"])
    assert sorted(seeds) == [1, 2]  # -m after the overrides: a multirun of two jobs
    seeds.clear()
    hydra_main("extract", lambda cfg: seeds.append(cfg.seed), argv=[f"out_dir={tmp_path}", "seed=7"])
    assert seeds == [7]
    assert sorted(p.name for p in (tmp_path / ".hydra").iterdir())  # Hydra's run records are there


def test_hydra_flags_in_any_order():
    from zoomfeat.cli import parse_hydra_args

    args = parse_hydra_args("bench", ["task=musk1", "-m", "mil.lr=1,2", "--cfg", "job"])
    assert args.multirun and args.cfg == "job" and args.overrides == ["task=musk1", "mil.lr=1,2"]
    args = parse_hydra_args("bench", ["--info", "cv.folds=3"])  # --info alone: all
    assert args.info == "all" and args.overrides == ["cv.folds=3"]
    args = parse_hydra_args("bench", ["cv.folds=3", "-i", "defaults"])
    assert args.info == "defaults" and args.overrides == ["cv.folds=3"]
    # split_argv keeps a flag's value with it (not taken for a slide)
    assert split_argv(["a.svs", "--cfg", "job", "seed=1"]) == (["a.svs"], ["--cfg", "job", "seed=1"])


def test_names_under_open_mappings_need_no_plus(tmp_path):
    """``encoder_checkpoints`` and ``storage_options`` default to ``{}``: the names under them are the
    user's, so ``encoder_checkpoints.ctranspath=W`` works as the docs write it (Hydra alone refused it
    as a key not in the config), and the ``+`` form still works."""
    from zoomfeat.cli import hydra_main

    def task(cfg):
        return dict(cfg.encoder_checkpoints), dict(cfg.storage_options)

    argv = [
        f"out_dir={tmp_path / 'o'}",
        "encoder_checkpoints.ctranspath=/w/ctranspath.pth",
        "+encoder_checkpoints.phikon=owkin/phikon",
        "storage_options.anon=true",
    ]
    ckpts, storage = hydra_main("extract", task, argv)
    assert ckpts == {"ctranspath": "/w/ctranspath.pth", "phikon": "owkin/phikon"}
    assert storage == {"anon": True}
