"""One error family for everything a user can get wrong.

Every error that a user's input, files or settings can cause is a :class:`ZoomfeatError`. The
entry points (:func:`zoomfeat.cli.report_errors`) catch the family and print it as one line --
``zoomfeat extract: error: <what file, what is wrong, what to do>`` -- and show a stack trace only
with ``ZOOMFEAT_DEBUG=1``. Anything else escaping an entry point is a bug in zoomfeat and keeps
its trace.

Each subclass also derives from the built-in type that the same failure used to raise
(``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` in a user's
script keeps working.
"""

from __future__ import annotations


class ZoomfeatError(Exception):
    """Base of every user-facing error: the message alone says what is wrong and what to do."""


class ConfigError(ZoomfeatError, ValueError):
    """A setting that is unknown, of the wrong type or out of range (names the key)."""


class InputError(ZoomfeatError, ValueError):
    """An input file or directory that cannot be used (names the file)."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input file or directory that does not exist (names it and what was looked for)."""


class SlideError(InputError):
    """A slide that cannot be opened or read, or lacks what the run needs (e.g. its resolution)."""


class BagError(InputError):
    """A feature bag that is missing, damaged or inconsistent with the others."""


class ShardError(InputError):
    """Training shards that are missing, damaged or inconsistent."""


class WeightsError(ZoomfeatError, ValueError):
    """A weight file or config that cannot be loaded (names the file and what is wrong)."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """Weights that could not be found locally or fetched from the model hub."""


class ConfigMismatchError(ZoomfeatError, RuntimeError):
    """Existing outputs were written with another configuration (the message shows the diff)."""


class OutputError(ZoomfeatError, OSError):
    """An output location that cannot be written (a file where a folder is needed, read-only ...)."""
