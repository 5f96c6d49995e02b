"""Each option's help text lives in one place: the ``#:`` comment of its config dataclass field.

``docs/options.md`` and the comments of ``zoomfeat/conf/{entry}.yaml`` are generated from those
comments by :mod:`zoomfeat.options`; these tests check that the committed files are exactly what
the generator writes, and that no option lacks a help text. After adding or changing a config
field: write its ``#:`` comment, then run ``python -m zoomfeat.options --write``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from zoomfeat.options import (
    ENTRY_POINTS,
    REGENERATE,
    _format,
    docs_path,
    field_help,
    markdown,
    options,
    undocumented,
    yaml_keys,
    yaml_text,
)

ENTRIES = {e.name: e for e in ENTRY_POINTS}
_ABSENT = object()


@pytest.mark.parametrize("name", list(ENTRIES))
def test_every_option_has_a_help_text(name):
    entry = ENTRIES[name]
    missing = undocumented(entry)
    assert not missing, (
        f"{name} options without a help text: {missing}. Write a `#: ...` comment above each field in "
        f"{entry.schema.replace(':', '.')} (or the section it is in), then run `{REGENERATE}`."
    )


def test_docs_options_md_is_generated():
    assert docs_path().read_text() == markdown(), (
        f"docs/options.md is not what the config dataclasses generate: run `{REGENERATE}` and commit the result."
    )


@pytest.mark.parametrize("name", list(ENTRIES))
def test_yaml_comments_are_the_dataclass_help(name):
    entry = ENTRIES[name]
    assert entry.yaml.read_text() == yaml_text(entry), (
        f"the comments of zoomfeat/conf/{name}.yaml are not the help texts of {entry.schema}: "
        f"run `{REGENERATE}` (it rewrites them from the dataclass) and commit the result."
    )


@pytest.mark.parametrize("name", list(ENTRIES))
def test_every_yaml_key_is_an_option(name):
    entry = ENTRIES[name]
    keys = {o.key for o in options(entry)}
    keys |= {".".join(k.split(".")[:n]) for k in list(keys) for n in range(1, k.count(".") + 1)}  # sections
    unknown = [k for k in yaml_keys(entry) if k not in keys]
    assert not unknown, f"zoomfeat/conf/{name}.yaml sets keys that {entry.schema} does not have: {unknown}"


@pytest.mark.parametrize("name", list(ENTRIES))
def test_yaml_defaults_are_the_dataclass_defaults(name):
    # The command line gets the YAML's value, Python callers the dataclass's: they must agree
    # (interpolations such as ${demo} excepted: the help text says what they resolve to).
    entry = ENTRIES[name]
    data = yaml.safe_load(entry.yaml.read_text())
    differ = []
    for option in options(entry):
        value: Any = data
        for part in option.key.split("."):
            value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
        if option.section or value is _ABSENT or (isinstance(value, str) and "${" in value):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
            same = option.default not in ("null", "true", "false") and float(option.default) == value
        else:
            same = _format(value) == option.default
        if not same:
            differ.append(f"{option.key}: YAML {_format(value)} vs dataclass {option.default}")
    assert not differ, f"zoomfeat/conf/{name}.yaml and {entry.schema} disagree on defaults: {differ}"


def test_a_stale_yaml_comment_is_rewritten_and_the_header_kept():
    entry = ENTRIES["extract"]
    text = entry.yaml.read_text()
    seed_line = next(ln for ln in text.splitlines() if ln.startswith("seed:"))
    stale = text.replace(seed_line, "seed: 0  # an old comment\n# a stray note between the keys")
    assert stale != text
    assert yaml_text(entry, stale) == text
    header = text.splitlines()[0]
    assert header.startswith("#") and yaml_text(entry, text).splitlines()[0] == header


@dataclass
class _Documented:
    """A section for the parser's test."""

    #: the help of a
    #: over two lines
    a: int = 1
    # a note for the code, not help
    #: the help of b
    b: str = "x"
    c: list[int] = field(default_factory=list)  # the help of c, at the end of its line
    d: float = 0.5  # noqa: E501
    # plain comments above a field are its help when no #: line is there
    e: bool = False
    f: int = 0


def test_field_help_reads_the_comments_of_a_dataclass():
    assert field_help(_Documented) == {
        "a": "the help of a over two lines",
        "b": "the help of b",
        "c": "the help of c, at the end of its line",
        "e": "plain comments above a field are its help when no #: line is there",
    }
    assert [f.name for f in dataclasses.fields(_Documented)] == list("abcdef")
