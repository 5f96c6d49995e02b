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
from collections.abc import Callable, Sequence
from typing import Any

from zoomfeat.runtime.errors import ZoomfeatError
from zoomfeat.runtime.resources import config_dir

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


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split command-line arguments into (bare inputs, Hydra arguments).

    A bare input is an argument without ``=`` that is not a flag (``-m``, ``--help``, ...)
    nor the value of a Hydra flag that takes one.
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
        elif "=" in arg:
            hydra_args.append(arg)
        else:
            inputs.append(arg)
    return inputs, hydra_args


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
    inputs, hydra_args = split_argv(argv) if inputs_key else ([], argv)
    if inputs:
        hydra_args.append(inputs_override(inputs, inputs_key))
    result: dict[str, Any] = {}

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _run(cfg):
        result["value"] = report_errors(config_name, task, cfg)
        return result["value"]

    saved = sys.argv
    sys.argv = [saved[0] if saved else config_name, *hydra_args]
    try:
        _run()
    finally:
        sys.argv = saved
    return result.get("value")


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
