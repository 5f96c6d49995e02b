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


def test_precheck_turns_hydra_failures_into_one_line(tmp_path):
    from zoomfeat.cli import config_keys, precheck
    from zoomfeat.runtime.errors import ConfigError, OutputError

    known = config_keys("extract")
    cases = {
        "features.timestp=3": "unknown setting 'features.timestp'; known keys under features: timestep, taps, ensemble",
        "foo=1": "unknown setting 'foo'; known keys: allow_random_weights",
        "model=nonexistent": "no config 'model/nonexistent'; available options for model: tiny, zoomldm_brca",
        f"{tmp_path}/a=b.svs": "no such file or directory",
    }
    for arg, text in cases.items():
        with pytest.raises(ConfigError) as err:
            precheck("extract", [arg], known)
        assert text in str(err.value) and "\n" not in str(err.value), arg
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile: the output directory is a file"):
        precheck("extract", [f"out_dir={tmp_path / 'afile'}"], known)
    precheck("extract", [f"out_dir={tmp_path / 'new'}", "seed=2"], known)  # fine: no error
    precheck("extract", ["-m", "seed=1,2"], known)  # sweeps are left to Hydra
