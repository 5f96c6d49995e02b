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
