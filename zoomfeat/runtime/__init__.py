"""The shared runtime: the bottom layer every other part of zoomfeat builds on.

One home for each cross-cutting job, so no two parts of zoomfeat do it differently:

- :mod:`~zoomfeat.runtime.errors`: the ``ZoomfeatError`` family (one clear line at the entry points);
- :mod:`~zoomfeat.runtime.device`: device choice, precision, autocast;
- :mod:`~zoomfeat.runtime.seeding`: global and keyed seeding;
- :mod:`~zoomfeat.runtime.atomic`: atomic, durable writes of files and directories;
- :mod:`~zoomfeat.runtime.weights`: safe weight loading, key checks, model-hub lookup;
- :mod:`~zoomfeat.runtime.config`: typed configs (the YAML is the dataclass);
- :mod:`~zoomfeat.runtime.provenance`: config and file hashes;
- :mod:`~zoomfeat.runtime.resources`: the shipped configs and demo data.
- :mod:`~zoomfeat.runtime.ema`, :mod:`~zoomfeat.runtime.checkpoints`,
  :mod:`~zoomfeat.runtime.train_state`, :mod:`~zoomfeat.runtime.distributed`: the trainers'
  shared machinery (EMA, atomic checkpoint directories and resume, the ``trainer/`` state, DDP
  set-up and threads), used by the ZoomLDM trainer and the CDM trainer alike.

It imports nothing else of zoomfeat (``tests/test_layers.py`` checks).
"""

from zoomfeat.runtime.errors import (
    BagError,
    ConfigError,
    ConfigMismatchError,
    InputError,
    InputNotFoundError,
    OutputError,
    ShardError,
    SlideError,
    WeightsError,
    WeightsNotFoundError,
    ZoomfeatError,
)

__all__ = [
    "BagError",
    "ConfigError",
    "ConfigMismatchError",
    "InputError",
    "InputNotFoundError",
    "OutputError",
    "ShardError",
    "SlideError",
    "WeightsError",
    "WeightsNotFoundError",
    "ZoomfeatError",
]
