"""Shared plumbing for the Hydra entry points (``python -m zoomfeat.extract`` ...).

Entry points take bare arguments (slides, directories, manifest CSVs) mixed with Hydra
overrides (``key=value``). :func:`hydra_main` turns the bare ones into the override
``inputs=[...]`` (quoted, so any path survives Hydra's grammar), then runs the task function as
a Hydra app on zoomfeat's ``conf/`` directory, as ``hydra.main`` would, so ``--multirun``, sweeps
and launchers (joblib, submitit) all work.

Errors come out as one line ``zoomfeat {entry}: error: ...`` (exit status 2), never a trace:
Hydra's and OmegaConf's exceptions are mapped by type (:func:`config_error`: an unknown key or
group option, an unparsable override, an unset environment variable), and Hydra's own writes of
its run record under ``out_dir/.hydra`` that fail (a file in the way, no permission, a full disk)
by :func:`output_error`. Hydra composes the config once per job; nothing here composes it.
``hydra.main`` itself is not used because it prints these failures as traces; the app is driven
through ``hydra._internal.hydra.Hydra``, as ``hydra.main`` drives it (Hydra 1.3).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import warnings
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from zoomfeat.runtime.errors import ConfigError, OutputError, ZoomfeatError
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
    "--cfg",
    "-c",
    "--package",
    "-p",
}
#: Hydra's flags whose value is optional (``--info`` alone means ``--info all``)
_HYDRA_OPTIONAL_VALUES = {
    "--info": {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"},
    "-i": {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"},
}


def _value_follows(flag: str, following: str | None) -> bool:
    """Whether the argument after Hydra flag ``flag`` is its value (``--cfg job``, ``--info defaults``)."""
    if flag in _HYDRA_FLAGS_WITH_VALUE:
        return True
    return following is not None and following in _HYDRA_OPTIONAL_VALUES.get(flag, ())


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
    for i, arg in enumerate(argv):
        if expect_value:
            hydra_args.append(arg)
            expect_value = False
        elif arg.startswith("-"):
            hydra_args.append(arg)
            expect_value = _value_follows(arg, argv[i + 1] if i + 1 < len(argv) else None)
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


def _yaml(config_name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = config_dir() / f"{config_name}.yaml"
    if not path.is_file():
        return {}
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}


def open_dicts(config_name: str) -> set[str]:
    """Top-level keys of ``conf/{config_name}.yaml`` whose default is an empty mapping that the user
    fills with names of their own (``encoder_checkpoints``, ``storage_options``, ``tissue``)."""
    return {k for k, v in _yaml(config_name).items() if isinstance(v, dict) and not v}


def open_dict_overrides(overrides: Sequence[str], keys: Collection[str]) -> list[str]:
    """``encoder_checkpoints.ctranspath=W`` as Hydra's add-or-set ``++encoder_checkpoints.ctranspath=W``.

    Hydra refuses a new key under a mapping of the config unless the override starts with ``+``;
    under an open mapping (:func:`open_dicts`) every name is the user's, so the plain form works too.
    """
    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" in o and "." in key and key.split(".", 1)[0] in keys and not key.startswith(("+", "~")):
            o = "++" + o
        out.append(o)
    return out


def _path_like(arg: str) -> bool:
    key = arg.split("=", 1)[0]
    return bool(re.search(r"[/\\ ]", key)) or arg.lower().endswith(SLIDE_SUFFIXES)


def check_arguments(hydra_args: Sequence[str], known_keys: Collection[str]) -> None:
    """An argument that looks like a path (a ``/`` in its key, a slide suffix) but neither exists
    nor names a setting: a :class:`ConfigError` saying so (Hydra would call it a bad override)."""
    for arg in hydra_args:
        if "=" not in arg or arg.startswith("-") or _key_root(arg) in known_keys:
            continue
        key = arg.split("=", 1)[0]
        if _path_like(arg) or not _KEY_RE.match(key):
            raise ConfigError(
                f"{arg!r}: no such file or directory, and {key!r} is not a setting. "
                "A path containing '=' is read as an input only when it exists; check the path, or list "
                "the slides in a manifest CSV (a 'path' column, one slide per row) and pass the CSV"
            )


def _flags_first(hydra_args: Sequence[str]) -> list[str]:
    """Hydra's flags (with their values) before the overrides, so ``key=v -m`` parses like
    ``-m key=v`` (argparse takes no flag after the overrides' positional list)."""
    flags: list[str] = []
    overrides: list[str] = []
    expect_value = False
    for i, arg in enumerate(hydra_args):
        if expect_value or arg.startswith("-"):
            following = hydra_args[i + 1] if i + 1 < len(hydra_args) else None
            takes = not expect_value and _value_follows(arg, following)
            flags.append(arg)
            if not expect_value and not takes and arg in _HYDRA_OPTIONAL_VALUES:
                flags.append("all")  # its default, written out: an override must not become its value
            expect_value = takes
        else:
            overrides.append(arg)
    return flags + overrides


def parse_hydra_args(config_name: str, hydra_args: Sequence[str]) -> argparse.Namespace:
    """Hydra's own command line (``-m``, ``--cfg job``, ``--info``, ``--help``, overrides) in any
    order; a flag Hydra does not know is a :class:`ConfigError`, not argparse's usage block."""
    parser = hydra_parser(config_name)
    parser.exit_on_error = False
    try:
        args, unknown = parser.parse_known_args(_flags_first(hydra_args))
    except argparse.ArgumentError as err:
        raise ConfigError(f"{config_name}: {err}; see --hydra-help") from None
    if unknown:
        raise ConfigError(
            f"{config_name}: unknown option(s) {' '.join(unknown)}; Hydra's flags are -m/--multirun, "
            "--cfg job|hydra|all, --info, --help, --hydra-help, --config-dir DIR, --config-name NAME"
        )
    if args.experimental_rerun is not None:
        raise ConfigError(f"{config_name}: --experimental-rerun is not supported; rerun the command line")
    return args


def inputs_override(inputs: Sequence[str], key: str = "inputs") -> str:
    """The Hydra override that sets ``key`` to the list of bare inputs, safely quoted."""
    return f"{key}=[" + ",".join(_quote(i) for i in inputs) + "]"


def hydra_main(
    config_name: str,
    task: Callable[[Any], Any],
    argv: Sequence[str] | None = None,
    *,
    inputs_key: str | None = "inputs",
) -> Any:
    """Run ``task(cfg)`` as a Hydra app on ``conf/{config_name}.yaml`` (what ``hydra.main`` does,
    with every failure before the task as one line).

    With ``inputs_key`` set, bare arguments become ``{inputs_key}=[...]`` (the primary config
    must define that key, e.g. ``inputs: []``). Hydra composes the config once per job; its
    errors are caught by type (:func:`config_error`), and its own writes (the run record under
    ``out_dir/.hydra``) that fail become one line naming the directory (:func:`output_error`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    known = config_keys(config_name)
    inputs, hydra_args = split_argv(argv, known) if inputs_key else ([], argv)
    return report_errors(
        config_name,
        lambda: _run_hydra(
            config_name, task, hydra_args=hydra_args, known=known, inputs=inputs, inputs_key=inputs_key
        ),
    )


def _run_hydra(
    config_name: str,
    task: Callable[[Any], Any],
    *,
    hydra_args: list[str],
    known: Collection[str],
    inputs: list[str],
    inputs_key: str | None,
) -> Any:
    """Parse Hydra's flags, then help / --cfg / --info, or the run or multirun of ``task``."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    check_arguments(hydra_args, known)
    args = parse_hydra_args(config_name, hydra_args)
    overrides = open_dict_overrides(args.overrides, open_dicts(config_name))
    if inputs and inputs_key:
        overrides.append(inputs_override(inputs, inputs_key))
    name = args.config_name or config_name
    primary = Path(args.config_path).resolve() if args.config_path else config_dir()
    search_path = create_config_search_path(f"file://{primary}")
    if args.config_dir is not None:
        extra = Path(args.config_dir).resolve()
        if not extra.is_dir():
            raise ConfigError(f"--config-dir {extra}: no such directory")
        search_path.prepend("command-line", f"file://{extra}")
    if args.cfg is None and args.resolve:
        raise ConfigError(f"{config_name}: --resolve goes with --cfg job|hydra|all")
    result: dict[str, Any] = {}
    composed: list[Any] = []  # the job's config, once Hydra has composed it

    def task_with_config_errors(cfg: Any) -> Any:
        try:
            return task(cfg)
        except OmegaConfBaseException as err:  # e.g. an interpolation resolved by the task
            raise config_error(err, config_name, overrides=overrides) from err

    def job(cfg: Any) -> Any:
        try:
            result["value"] = report_errors(config_name, task_with_config_errors, cfg)
        except BaseException as err:  # the task's own failure: never taken for one of Hydra's
            result["task_error"] = err
            raise
        return result["value"]

    GlobalHydra.instance().clear()
    saved_argv, saved_format = sys.argv, warnings.formatwarning
    sys.argv = [saved_argv[0] if saved_argv else config_name, *hydra_args]  # read by bench's sweeps
    warnings.formatwarning = _one_line_warnings(config_name, saved_format)
    try:
        hydra = Hydra.create_main_hydra2(task_name=config_name, config_search_path=search_path)
        if args.help or args.hydra_help:
            show = hydra.app_help if args.help else hydra.hydra_help
            show(config_name=name, args_parser=hydra_parser(config_name), args=args)
        elif args.cfg is not None:
            hydra.show_cfg(
                config_name=name, overrides=overrides, cfg_type=args.cfg, package=args.package,
                resolve=args.resolve,
            )  # fmt: skip
        elif args.info is not None:
            hydra.show_info(args.info, config_name=name, overrides=overrides)
        elif args.shell_completion:
            hydra.shell_completion(config_name=name, overrides=overrides)
        else:
            mode = _mode(overrides, multirun=args.multirun)
            if not any(o.split("=", 1)[0] == "hydra.mode" for o in overrides):
                overrides.append(f"hydra.mode={mode.name}")
            if mode == RunMode.MULTIRUN:
                hydra.multirun(config_name=name, task_function=job, overrides=overrides)
            else:
                _run_once(hydra, name, job=job, overrides=overrides, composed=composed)
    except (HydraException, OmegaConfBaseException) as err:
        if result.get("task_error") is err:
            raise
        raise config_error(err, config_name, overrides=overrides) from err
    except (OSError, ValueError) as err:
        written = _os_error(err)
        if result.get("task_error") is err or written is None:
            raise
        raise output_error(
            written, _selected(composed, "hydra.runtime.output_dir"), out_dir=_selected(composed, "out_dir")
        ) from err
    finally:
        sys.argv, warnings.formatwarning = saved_argv, saved_format
        GlobalHydra.instance().clear()
    return result.get("value")


def hydra_parser(config_name: str) -> argparse.ArgumentParser:
    """Hydra's argument parser, named after the entry point (for ``--help``)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.prog = f"python -m zoomfeat.{config_name}"
    return parser


def _mode(overrides: Sequence[str], *, multirun: bool) -> Any:
    """RUN or MULTIRUN: ``-m``, else a ``hydra.mode=`` override, else RUN."""
    from hydra.types import RunMode

    if multirun:
        return RunMode.MULTIRUN
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "hydra.mode"]
    return RunMode.MULTIRUN if given and given[-1].strip().upper() == "MULTIRUN" else RunMode.RUN


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (logging wraps a log file it cannot open into a ValueError)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _run_once(
    hydra: Any, config_name: str, *, job: Callable[[Any], Any], overrides: list[str], composed: list[Any]
) -> Any:
    """``Hydra.run``: compose the config (once), then Hydra's ``run_job`` (the output directory,
    the run record, logging, the task). The composed config goes into ``composed``, so a failed
    write can name the directory Hydra chose (``hydra.runtime.output_dir``)."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode

    cfg = hydra.compose_config(
        config_name=config_name, overrides=overrides, with_log_configuration=True, run_mode=RunMode.RUN
    )
    composed.append(cfg)
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=config_name)
    ret = run_job(
        hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
        task_function=job,
        config=cfg,
        job_dir_key="hydra.run.dir",
        job_subdir_key=None,
    )
    callbacks.on_run_end(config=cfg, config_name=config_name, job_return=ret)
    return ret.return_value  # raises the task's exception, as Hydra.run does


def _selected(composed: list[Any], key: str) -> Path | None:
    """A directory of the job's composed config (``hydra.runtime.output_dir``, set before Hydra's
    first write; ``out_dir``), if there is one and it resolves."""
    from omegaconf import OmegaConf

    if not composed:
        return None
    out = OmegaConf.select(composed[0], key, default=None, throw_on_resolution_failure=False)
    return Path(str(out)) if isinstance(out, str) and out else None


def output_error(err: OSError, run_dir: Path | None, *, out_dir: Path | None = None) -> OutputError:
    """One line for a failed write of Hydra's run record (``run_dir``, ``out_dir/.hydra/...``): the
    directory, why (a file in the way, no space, no permission) and what to do."""
    target = Path(err.filename) if err.filename else run_dir
    why = err.strerror or str(err)
    if target is None:
        return OutputError(f"cannot write Hydra's run record ({why}); choose a writable out_dir")
    where = run_dir or target
    blocker = next((p for p in (target, *target.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir() and blocker == out_dir:
        return OutputError(
            f"{out_dir}: the output directory is a file, not a directory; choose another path or move the file"
        )
    if blocker is not None and not blocker.is_dir():
        return OutputError(
            f"{blocker}: is a file, not a directory (Hydra writes its run record to {where}); "
            "choose another out_dir or move the file"
        )
    if err.errno == errno.ENOSPC:
        return OutputError(
            f"{where}: no space left on the device while Hydra wrote its run record; "
            "free space there or choose another out_dir"
        )
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(
            f"{blocker or target}: not writable ({why}), and Hydra writes its run record to {where}; "
            "make it writable or choose another out_dir"
        )
    return OutputError(f"{target}: cannot create the output directory ({why}); choose a writable location")


def config_error(err: Exception, config_name: str, *, overrides: Sequence[str] = ()) -> ConfigError:
    """One line for a Hydra or OmegaConf error, from the exception's type and fields
    (``overrides``: the command line's, to name the key whose interpolation failed)."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        OmegaConfBaseException,
    )

    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    if isinstance(err, MissingConfigException):
        missing = err.missing_cfg_file or ""
        group = missing.rsplit("/", 1)[0] if "/" in missing else ""
        options = ", ".join(err.options or [])
        if group:
            return ConfigError(
                f"{config_name}: no config {missing!r}; available options for {group}: {options}"
            )
        return ConfigError(f"{config_name}: {_first_line(err)}")
    if isinstance(err, OverrideParseException):
        return ConfigError(
            f"{config_name}: cannot parse {err.override!r} ({_first_line(err)}). Quote values with special "
            "characters (key='a,b'); a slide path containing '=' must exist, or be listed in a manifest CSV "
            "(a 'path' column) passed instead"
        )
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return ConfigError(f"{config_name}: {_unknown_key(str(cause.full_key), config_name)}")
    if isinstance(cause, InterpolationResolutionError):
        variable = _missing_env_variable(cause)
        if variable is not None:
            key = _override_using(f"oc.env:{variable}", overrides) or str(cause.full_key or "a setting")
            return ConfigError(
                f"{config_name}: {key}: environment variable {variable!r} is not set (its value "
                f"interpolates ${{oc.env:{variable}}}); set the variable, or give {key} a plain value"
            )
        key = f"{cause.full_key}: " if cause.full_key else ""
        return ConfigError(
            f"{config_name}: {key}{_first_line(cause)}; fix the interpolation or give a plain value"
        )
    return ConfigError(f"{config_name}: {_first_line(err)}")


def _missing_env_variable(err: BaseException) -> str | None:
    """The variable whose lookup failed under ``err`` (``os.environ``'s KeyError carries its name)."""
    name = None
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, KeyError) and seen.args and isinstance(seen.args[0], str):
            name = seen.args[0]  # the deepest one is os.environ's own (its argument: the name)
        seen = seen.__cause__ or seen.__context__
    return name


def _override_using(text: str, overrides: Sequence[str]) -> str | None:
    """The key of the command-line override whose value contains ``text``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - unparsable: Hydra reported that first
        return None
    return next((o.key_or_group for o in parsed if text in (o.input_line or "")), None)


def _first_line(err: BaseException) -> str:
    """The message of ``err`` without OmegaConf's ``full_key:``/``object_type=`` detail lines."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    return " ".join(keep[:2]) or type(err).__name__


def _unknown_key(key: str, config_name: str) -> str:
    """``unknown setting 'a.b'; known keys under a: ...`` from the primary config's YAML."""
    parent, _, _ = key.rpartition(".")
    node: Any = _yaml(config_name)
    for part in parent.split(".") if parent else []:
        node = node.get(part) if isinstance(node, dict) else None
    if not parent:  # the top level: its keys and the groups of its defaults list, sorted
        keys = sorted(k for k in config_keys(config_name) if k != "hydra" and "/" not in k)
        return f"unknown setting {key!r}; known keys: {', '.join(keys)}"
    if isinstance(node, dict):
        return f"unknown setting {key!r}; known keys under {parent}: {', '.join(str(k) for k in node)}"
    return f"unknown setting {key!r}"


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
    """Run ``task(*args)``; a :class:`ZoomfeatError` becomes one line on stderr and exit status 2,
    a stop by SIGINT (Ctrl-C), SIGTERM or SIGUSR1 one line and exit status 128 + signal.

    The lines read ``zoomfeat {entry}: error: {message}`` and ``zoomfeat {entry}: stopped by
    SIGTERM: {message}`` (:mod:`zoomfeat.runtime.stopping`). The task runs with the stop signals
    raising :class:`~zoomfeat.runtime.stopping.StopRequested` where it is (``at_once``, as Python's
    own Ctrl-C); a workflow that stops between units installs its own handlers inside (extraction,
    ``prepare``, ``train``, ``generate``: the unit in hand finished or abandoned; the bench: its
    staging directory removed). With ``ZOOMFEAT_DEBUG=1``, or inside a multirun job (where Hydra
    must see the failure), an error is re-raised with its trace.
    """
    import logging

    from zoomfeat.runtime.stopping import StopRequested, stop_line, stop_on_signals

    # A log handler that cannot write (its file on a full disk) drops the record instead of
    # printing a trace over the run's own lines; ZOOMFEAT_DEBUG=1 shows those traces.
    raise_before, logging.raiseExceptions = logging.raiseExceptions, debug_enabled()
    try:
        with stop_on_signals(at_once=True):
            return task(*args)
    except StopRequested as stop:
        if debug_enabled():
            raise
        print(stop_line(entry, stop), file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    except ZoomfeatError as err:
        if debug_enabled() or in_multirun():
            raise
        print(f"zoomfeat {entry}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    finally:
        logging.raiseExceptions = raise_before
