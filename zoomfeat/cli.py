"""Shared plumbing for the Hydra entry points (``python -m zoomfeat.extract`` ...).

Entry points take bare arguments (slides, directories, manifest CSVs) mixed with Hydra
overrides (``key=value``). :func:`hydra_main` turns the bare ones into the override
``inputs=[...]`` (quoted, so any path survives Hydra's grammar), then runs the task function
under ``hydra.main`` with zoomfeat's ``conf/`` directory, so ``--multirun``, sweeps and
launchers (joblib, submitit) all work.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable, Collection, Sequence
from typing import Any

from zoomfeat.runtime.atomic import ensure_dir
from zoomfeat.runtime.errors import ConfigError, ZoomfeatError
from zoomfeat.runtime.resources import config_dir

#: file name endings that mark an argument as a slide path (openslide's formats and manifests)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
                  ".qptiff", ".dcm", ".csv")  # fmt: skip

#: environment variable that makes entry points show the stack trace of user errors too
DEBUG_ENV = "ZOOMFEAT_DEBUG"

_HYDRA_FLAGS_WITH_VALUE = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
}


def _quote(value: str) -> str:
    # Hydra's quoted strings: a backslash escapes only when it precedes a quote, so double
    # only the backslash runs that stand before a quote or the closing quote.
    value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
    return "'" + value.replace("'", "\\'") + "'"


#: the syntax of a Hydra override key (``features.timestep``, ``+x``, ``hydra/launcher``, ``a@b``)
_KEY_RE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w\-]*(?:[./][\w\-]+)*(?:@[\w.\-/]+)?$")


def _key_root(arg: str) -> str:
    """The first component of an override's key: ``features`` of ``+features.timestep=3``."""
    key = arg.split("=", 1)[0].lstrip("+~")
    return re.split(r"[./@]", key, maxsplit=1)[0]


def _is_existing_path(arg: str, known_keys: Collection[str] | None) -> bool:
    """Whether ``arg`` (which contains ``=``) is a file or directory rather than an override: it
    exists on disk and its text before the first ``=`` is not a known key (without ``known_keys``:
    not an override key at all, e.g. ``/data/a=b.svs``)."""
    if not os.path.exists(arg):
        return False
    if known_keys is not None:
        return _key_root(arg) not in known_keys
    return not _KEY_RE.match(arg.split("=", 1)[0])


def split_argv(argv: Sequence[str], known_keys: Collection[str] | None = None) -> tuple[list[str], list[str]]:
    """Split command-line arguments into (bare inputs, Hydra arguments).

    A bare input is an argument that is not a flag (``-m``, ``--help``, ...) nor the value of a
    Hydra flag that takes one, and either has no ``=`` or is an existing file or directory whose
    text before the first ``=`` is not a config key (``known_keys``: the top-level keys and group
    names, :func:`config_keys`), so ``/data/run=3/slide.svs`` is a slide, ``out_dir=x`` a setting.
    """
    inputs: list[str] = []
    hydra_args: list[str] = []
    expect_value = False
    for arg in argv:
        if expect_value:
            hydra_args.append(arg)
            expect_value = False
        elif arg.startswith("-"):
            hydra_args.append(arg)
            expect_value = arg in _HYDRA_FLAGS_WITH_VALUE
        elif "=" in arg and not _is_existing_path(arg, known_keys):
            hydra_args.append(arg)
        else:
            inputs.append(arg)
    return inputs, hydra_args


def config_keys(config_name: str) -> set[str]:
    """Top-level keys of ``conf/{config_name}.yaml``, the groups of its defaults list and ``hydra``."""
    keys = {"hydra"}
    data = _yaml(config_name)
    keys |= {str(k) for k in data if k != "defaults"}
    for item in data.get("defaults", []) or []:
        if isinstance(item, dict):
            keys |= {re.sub(r"^override\s+", "", str(k)).split("@")[0].lstrip("/") for k in item}
    return keys


def _yaml(config_name: str) -> dict:
    from omegaconf import OmegaConf

    path = config_dir() / f"{config_name}.yaml"
    if not path.is_file():
        return {}
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def _path_like(arg: str) -> bool:
    key = arg.split("=", 1)[0]
    return bool(re.search(r"[/\\ ]", key)) or arg.lower().endswith(SLIDE_SUFFIXES)


def precheck(config_name: str, hydra_args: Sequence[str], known_keys: Collection[str]) -> None:
    """Catch what Hydra would report with several lines (or a trace) as one :class:`ConfigError`
    or :class:`OutputError`: an argument that is neither a setting nor an existing path, an
    unknown key or group option, an unparsable override, and an ``out_dir`` that cannot be a
    directory (Hydra creates its run directory there before any zoomfeat code runs).

    Skipped for command lines with flags (``-m``, ``--cfg`` ...) or ``hydra.*`` overrides.
    """
    if any(a.startswith("-") for a in hydra_args) or any(_key_root(a) == "hydra" for a in hydra_args):
        return
    for arg in hydra_args:
        if "=" not in arg:
            continue
        root = _key_root(arg)
        if root in known_keys:
            continue
        if _path_like(arg) or not _KEY_RE.match(arg.split("=", 1)[0]):
            raise ConfigError(
                f"{arg!r}: no such file or directory, and {arg.split('=', 1)[0]!r} is not a setting. "
                "A path containing '=' is read as an input only when it exists; check the path, or list "
                "the slides in a manifest CSV (a 'path' column, one slide per row) and pass the CSV"
            )
        if not arg.startswith("+"):
            raise ConfigError(
                f"{config_name}: unknown setting {arg.split('=', 1)[0]!r}; known keys: "
                f"{', '.join(sorted(k for k in known_keys if k != 'hydra' and '/' not in k))}"
            )
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name=config_name):
            cfg = compose(config_name, overrides=list(hydra_args))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{config_name}: {_hydra_message(err, config_name)}") from None
    try:
        out_dir = OmegaConf.select(cfg, "out_dir", default=None, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001 - an interpolation only the run can resolve: Hydra decides
        out_dir = None
    if isinstance(out_dir, str) and out_dir and "${" not in out_dir:
        ensure_dir(out_dir)


def _hydra_message(err: Exception, config_name: str = "") -> str:
    """Hydra's multi-line message as one line (unknown keys get the usual 'known keys' hint)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    cut = next((i for i, ln in enumerate(lines) if ln.startswith("Config search path")), len(lines))
    lines = [ln for ln in lines[:cut] if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    text = " ".join(lines)
    m = re.search(r"Could not override '([^']+)'", text)
    if m and ("not in struct" in text or "To append" in text):
        key = m.group(1)
        parent, _, _ = key.rpartition(".")
        node: Any = _yaml(config_name)
        for part in parent.split(".") if parent else []:
            node = node.get(part) if isinstance(node, dict) else None
        known = (
            f"; known keys{' under ' + parent if parent else ''}: {', '.join(node)}"
            if isinstance(node, dict)
            else ""
        )
        return f"unknown setting {key!r}{known}"
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        group = m.group(1).rsplit("/", 1)[0]
        options = [
            ln for ln in lines if ln and not ln.startswith(("In '", "Could not find", "Available options"))
        ]
        return f"no config {m.group(1)!r}; available options for {group}: {', '.join(options)}"
    if "Error parsing override" in text:
        return (
            f"{text}. Quote values with special characters (key='a,b'); a slide path containing '=' "
            "must exist, or be listed in a manifest CSV (a 'path' column) passed instead"
        )
    return text


def inputs_override(inputs: Sequence[str], key: str = "inputs") -> str:
    """The Hydra override that sets ``key`` to the list of bare inputs, safely quoted."""
    return f"{key}=[" + ",".join(_quote(i) for i in inputs) + "]"


def hydra_main(
    config_name: str,
    task: Callable[[Any], Any],
    argv: Sequence[str] | None = None,
    inputs_key: str | None = "inputs",
) -> Any:
    """Run ``task(cfg)`` under ``hydra.main`` with ``conf/{config_name}.yaml``.

    With ``inputs_key`` set, bare arguments become ``{inputs_key}=[...]`` (the primary config
    must define that key, e.g. ``inputs: []``).
    """
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    known = config_keys(config_name)
    inputs, hydra_args = split_argv(argv, known) if inputs_key else ([], argv)
    report_errors(config_name, precheck, config_name, hydra_args, known)
    if inputs:
        hydra_args.append(inputs_override(inputs, inputs_key))
    result: dict[str, Any] = {}

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _run(cfg):
        result["value"] = report_errors(config_name, task, cfg)
        return result["value"]

    saved, saved_format = sys.argv, warnings.formatwarning
    sys.argv = [saved[0] if saved else config_name, *hydra_args]
    warnings.formatwarning = _one_line_warnings(config_name, saved_format)
    try:
        _run()
    finally:
        sys.argv, warnings.formatwarning = saved, saved_format
    return result.get("value")


def _one_line_warnings(entry: str, default: Callable[..., str]) -> Callable[..., str]:
    """``warnings.formatwarning`` that prints zoomfeat's own warnings as ``zoomfeat {entry}:
    warning: ...`` (one line, no source line); other libraries' warnings keep their format."""
    package = os.path.dirname(os.path.abspath(__file__))

    def fmt(message, category, filename, lineno, line=None):
        if os.path.abspath(str(filename)).startswith(package + os.sep) and issubclass(category, UserWarning):
            return f"zoomfeat {entry}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    return fmt


def debug_enabled() -> bool:
    """Whether ``ZOOMFEAT_DEBUG`` asks for stack traces of user errors."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra ``--multirun`` sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not running under Hydra
        return False


def report_errors(entry: str, task: Callable[..., Any], *args: Any) -> Any:
    """Run ``task(*args)``; a :class:`ZoomfeatError` becomes one line on stderr and exit status 2.

    The line reads ``zoomfeat {entry}: error: {message}``. With ``ZOOMFEAT_DEBUG=1``, or inside a
    multirun job (where Hydra must see the failure), the error is re-raised with its trace.
    """
    try:
        return task(*args)
    except ZoomfeatError as err:
        if debug_enabled() or in_multirun():
            raise
        print(f"zoomfeat {entry}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
