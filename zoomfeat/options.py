"""Every option's help text in one place: the ``#:`` comment above its config dataclass field.

Each entry point's options are the fields of one dataclass (``python -m zoomfeat.extract`` takes
:class:`zoomfeat.features.config.ExtractConfig`, ...; see :data:`ENTRY_POINTS`). The help text of
a field is the comment written right above it, best in Sphinx's ``#:`` form (several comment lines
are one text), and/or a ``# ...`` comment at the end of the field's own line::

    #: q_sample(z0, t, eps) at this timestep
    timestep: int = 200
    top_k: int = 6  # most attended tiles shown per feature set

A nested section (``features``) is described by the ``#:`` comment of its field, else by the
first sentence of its class docstring. From these texts this module renders:

- ``docs/options.md``: one table per entry point (key, default, help);
- the comments of ``zoomfeat/conf/{entry}.yaml``: each key's line ends with its help text (none
  when the field has none), and no other comment follows the file's header.

``python -m zoomfeat.options`` prints the Markdown; ``python -m zoomfeat.options --write``
rewrites ``docs/options.md`` and the YAML comments in a source checkout.
``tests/test_options.py`` checks that both are what this module generates, and that every option
has a help text.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from zoomfeat.runtime.config import iter_keys
from zoomfeat.runtime.resources import config_dir

#: the command that regenerates what this module renders (named by the tests' messages)
REGENERATE = "python -m zoomfeat.options --write"
#: where a key's YAML comment starts (the column the conf files align their comments on)
COMMENT_COLUMN = 31


@dataclass(frozen=True)
class EntryPoint:
    """One ``python -m zoomfeat.NAME`` command and the dataclass its ``key=value`` options fill."""

    name: str
    schema: str  # "module:Class"
    usage: str

    def load(self) -> type:
        module, _, cls = self.schema.partition(":")
        return typing.cast(type, getattr(importlib.import_module(module), cls))

    @property
    def yaml(self) -> Path:
        return Path(config_dir()) / f"{self.name}.yaml"


ENTRY_POINTS: tuple[EntryPoint, ...] = (
    EntryPoint("extract", "zoomfeat.features.config:ExtractConfig", "python -m zoomfeat.extract SLIDES... [key=value ...]"),
    EntryPoint("bench", "zoomfeat.mil.config:BenchmarkConfig", "python -m zoomfeat.bench task=NAME [key=value ...]"),
    EntryPoint("export", "zoomfeat.interop.config:ExportConfig", "python -m zoomfeat.export OUT_DIR to=clam|stamp|slideflow"),
    EntryPoint("heatmap", "zoomfeat.heatmap:HeatmapConfig", "python -m zoomfeat.heatmap SLIDE... bench_dir=DIR"),
    EntryPoint("prepare", "zoomfeat.training.config:PrepareConfig", "python -m zoomfeat.prepare SLIDES... out_dir=DIR"),
    EntryPoint("train", "zoomfeat.training.config:TrainConfig", "python -m zoomfeat.train data=DIR [key=value ...]"),
    EntryPoint("generate", "zoomfeat.generation.config:GenerateConfig", "python -m zoomfeat.generate SLIDE mode=... [key=value ...]"),
)  # fmt: skip


# -- help texts -------------------------------------------------------------------------------


_PRAGMA = re.compile(r"#\s*(fmt:|noqa|type:|pragma|pyright:|mypy:)")


@cache
def field_help(cls: type) -> dict[str, str]:
    """Field name -> help text of dataclass ``cls`` (its ``#:`` comments; see the module docstring)."""
    try:
        lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    except (OSError, TypeError):  # no source (a frozen app): no help
        return {}
    tree = ast.parse("\n".join(lines))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    helps: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        block: list[str] = []
        i = stmt.lineno - 2  # the line above the field (0-based)
        while i >= 0 and lines[i].strip().startswith("#") and not _PRAGMA.match(lines[i].strip()):
            block.insert(0, lines[i].strip())
            i -= 1
        if any(c.startswith("#:") for c in block):  # #: lines are help; other comments are notes
            block = [c for c in block if c.startswith("#:")]
        above = [c.lstrip("#:").strip() for c in block]
        trailing = _comment_of(lines[stmt.end_lineno - 1]) if stmt.end_lineno else None
        if trailing and _PRAGMA.match("# " + trailing):
            trailing = None
        text = " ".join([*above, *([trailing] if trailing else [])])
        if text:
            helps[stmt.target.id] = text
    return helps


def _comment_of(line: str) -> str | None:
    """The text of a trailing ``# comment`` of a Python or YAML line (outside quotes), else None."""
    code, comment = _split_comment(line)
    return comment


def _split_comment(line: str) -> tuple[str, str | None]:
    """``line`` -> (the code before a trailing comment, the comment's text or None)."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), None


def _docstring_summary(cls: type) -> str:
    """The first sentence of a class docstring, as plain one-line text."""
    doc = inspect.getdoc(cls) or ""
    if doc == inspect.getdoc(object) or doc.startswith(f"{cls.__name__}("):  # dataclass's generated one
        return ""
    first = doc.split("\n\n")[0].replace("\n", " ")
    first = re.sub(r":\w+:`~?([^`]+)`", r"``\1``", first)
    return first.strip()


def _types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no nested sections found
        return {f.name: f.type for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Option:
    """One row of an entry point's table: a key (leaf or section) with its default and help."""

    key: str
    default: str
    help: str
    section: bool = False


def _format(value: Any) -> str:
    """A default as the YAML/command line spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def groups(entry: EntryPoint) -> dict[str, str]:
    """The Hydra groups the entry point's YAML selects: ``{group: default option}``."""
    found: dict[str, str] = {}
    in_defaults = False
    for line in entry.yaml.read_text().splitlines():
        if re.match(r"defaults:\s*(#.*)?$", line):
            in_defaults = True
            continue
        if in_defaults:
            m = re.match(r"\s+-\s+(\w+):\s*([\w.-]+)", line)
            if m and not line.strip().startswith("- override"):
                found[m[1]] = m[2]
            elif line and not line.startswith(" "):
                break
    return found


def group_choices(group: str) -> list[str]:
    """The options of a Hydra group (``conf/{group}/*.yaml``)."""
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


def options(entry: EntryPoint) -> list[Option]:
    """Every key of ``entry``: sections (with a help text) before their keys, in field order."""
    schema = entry.load()
    group_defaults = groups(entry)
    rows: list[Option] = []
    seen_sections: set[str] = set()
    for key, f in iter_keys(schema):
        parts = key.split(".")
        cls = schema
        for n, name in enumerate(parts[:-1]):
            section = ".".join(parts[: n + 1])
            sub = _types(cls)[name]
            if section not in seen_sections:
                seen_sections.add(section)
                text = field_help(cls).get(name) or ""
                default = ""
                if section in group_defaults:  # model=tiny chooses conf/model/tiny.yaml
                    default = group_defaults[section]
                    choices = f"one of {' | '.join(group_choices(section))} (the files of conf/{section}/)"
                    text = f"{text}; {choices}" if text else choices
                text = text or _docstring_summary(sub)
                if text:
                    rows.append(Option(section, default, text, section=True))
            cls = sub
        rows.append(Option(key, _format(_default(f)), field_help(cls).get(parts[-1], ""), section=False))
    return rows


def undocumented(entry: EntryPoint) -> list[str]:
    """The keys of ``entry`` without a help text (sections need none: their keys have theirs)."""
    return [o.key for o in options(entry) if not o.section and not o.help]


# -- docs/options.md --------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Help text as a table cell: RST literals as code, Markdown's special characters escaped."""
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    parts = re.split(r"(`[^`]*`)", text)  # code spans stay as written
    plain = {"*": "\\*", "_": "\\_", "<": "&lt;", ">": "&gt;", "[": "\\["}
    out = [p if p.startswith("`") else "".join(plain.get(c, c) for c in p) for p in parts]
    return "".join(out).replace("|", "\\|")


def markdown() -> str:
    """``docs/options.md``: one table per entry point."""
    out = [
        "# Options",
        "",
        "<!-- Generated from the config dataclasses' #: comments by `" + REGENERATE + "`; do not edit. -->",
        "",
        "Every `key=value` setting of each entry point, its default and what it does. Nested keys are",
        "written with dots on the command line (`features.timestep=300`); a Hydra group (`model=tiny`)",
        "selects a file of `zoomfeat/conf/{group}/` that sets the keys under it. Lists and dicts are",
        "written as YAML: `'features.taps=[middle_block]'`.",
        "",
        "| entry point | config dataclass | YAML |",
        "|---|---|---|",
    ]
    for e in ENTRY_POINTS:
        module, _, cls = e.schema.partition(":")
        out.append(f"| [{e.name}](#{e.name}) | `{module}.{cls}` | `zoomfeat/conf/{e.name}.yaml` |")
    for e in ENTRY_POINTS:
        out += ["", f"## {e.name}", "", f"`{e.usage}`", "", "| key | default | meaning |", "|---|---|---|"]
        for o in options(e):
            key = f"**`{o.key}`**" if o.section else f"`{o.key}`"
            default = "`" + o.default.replace("|", "\\|") + "`" if o.default else ""
            out.append(f"| {key} | {default} | {_cell(o.help)} |")
    return "\n".join(out) + "\n"


# -- YAML comments ----------------------------------------------------------------------------


def _yaml_key(line: str) -> tuple[int, str] | None:
    """(indent, key) of a ``key: value`` line, else None."""
    m = re.match(r"( *)([A-Za-z_][\w]*)\s*:(\s|$)", line)
    return (len(m[1]), m[2]) if m else None


def _with_comment(code: str, comment: str | None) -> str:
    if not comment:
        return code
    return (
        code.ljust(COMMENT_COLUMN - 1) + " # " + comment
        if len(code) < COMMENT_COLUMN - 1
        else f"{code}  # {comment}"
    )


def yaml_text(entry: EntryPoint, text: str | None = None) -> str:
    """The entry point's YAML with its comments generated (see the module docstring).

    The file's header (the comment lines before its first key) and the ``hydra`` and ``defaults``
    blocks are kept as they are, except that a ``defaults`` line choosing a Hydra group gets that
    group's help; every key of the schema ends with its help text; other comment lines go.
    """
    if text is None:
        text = entry.yaml.read_text()
    helps = {o.key: re.sub(r"``([^`]+)``", r"\1", o.help) for o in options(entry)}
    group_defaults = groups(entry)
    lines = text.splitlines()
    out: list[str] = []
    header = True
    path: list[tuple[int, str]] = []
    block: str | None = None  # "hydra" / "defaults": kept as written
    for line in lines:
        stripped = line.strip()
        if header and (stripped.startswith("#") or not stripped):
            out.append(line)
            continue
        header = False
        if not stripped:
            out.append(line)
            continue
        if not line.startswith(" ") and not stripped.startswith("#"):
            block = None
        if block == "defaults":
            m = re.match(r"(\s+-\s+(\w+):\s*[\w.-]+)", line)
            if m and m[2] in group_defaults:
                code, _ = _split_comment(line)
                out.append(_with_comment(code, helps.get(m[2])))
            else:
                out.append(line)
            continue
        if block == "hydra":
            out.append(line)
            continue
        if stripped.startswith("#"):
            continue  # help lives in the dataclass
        key = _yaml_key(line)
        if key is None:  # a continued value (block list ...): kept
            out.append(line)
            continue
        indent, name = key
        path = [(i, k) for i, k in path if i < indent] + [(indent, name)]
        dotted = ".".join(k for _, k in path)
        if indent == 0 and name in ("hydra", "defaults"):
            block = name
            out.append(line)
            continue
        code, comment = _split_comment(line)
        out.append(_with_comment(code, helps[dotted]) if dotted in helps else line)
    return "\n".join(out) + "\n"


def yaml_keys(entry: EntryPoint) -> Iterator[str]:
    """The dotted keys set in the entry point's YAML (outside ``hydra`` and ``defaults``)."""
    path: list[tuple[int, str]] = []
    for line in entry.yaml.read_text().splitlines():
        key = _yaml_key(line)
        if key is None:
            continue
        indent, name = key
        path = [(i, k) for i, k in path if i < indent] + [(indent, name)]
        if path[0][1] not in ("hydra", "defaults"):
            yield ".".join(k for _, k in path)


# -- command line -----------------------------------------------------------------------------


def docs_path() -> Path:
    """``docs/options.md`` of the source checkout this package is imported from."""
    return Path(__file__).resolve().parents[1] / "docs" / "options.md"


def write() -> list[Path]:
    """Rewrite ``docs/options.md`` and the entry points' YAML comments; the files that changed."""
    changed: list[Path] = []
    targets = [(docs_path(), markdown())] + [(e.yaml, yaml_text(e)) for e in ENTRY_POINTS]
    for path, text in targets:
        if not path.parent.is_dir():
            raise SystemExit(f"{path.parent}: not found; --write needs a source checkout of zoomfeat")
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zoomfeat.options",
        description="Render the option tables (docs/options.md) from the config dataclasses' #: comments.",
    )
    parser.add_argument(
        "--write", action="store_true", help="rewrite docs/options.md and the conf/*.yaml comments"
    )
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(markdown())
        return 0
    for path in write():
        print(f"rewrote {path}")
    missing = {e.name: undocumented(e) for e in ENTRY_POINTS}
    for name, keys in missing.items():
        if keys:
            print(
                f"{name}: options without a help text (add a #: comment above the field): {', '.join(keys)}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
