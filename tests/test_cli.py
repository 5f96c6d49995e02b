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
