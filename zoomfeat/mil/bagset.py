"""One feature set's bags for a cohort (:class:`BagSet`), and what every MIL input reader shares.

A :class:`BagSet` is what training sees: per slide, its patient, its 0/1 label and its instance
features ``(N_i, D)``. The features are held in memory (``bags``; float16 by default, which
halves the memory of float32 features and keeps ~3 significant digits, ample for standardised
MIL inputs; values beyond the float16 range, 65504, are refused rather than turned into inf) or
read from the bag files on each access (``paths``) when they do not fit. The readers that build
it are :mod:`zoomfeat.mil.sources` (bag directories, instance CSVs); the labels come from
:mod:`zoomfeat.mil.labels`.

Input problems that are worked around (bags nobody labelled, empty bags, unmapped labels) are
a :class:`BenchWarning`; those that cannot be are an :class:`~zoomfeat.runtime.errors.InputError`
(labels, splits) or :class:`~zoomfeat.runtime.errors.BagError` (bags) naming the file.
See ``docs/ARCHITECTURE.md`` (MIL benchmark, Bag format).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomfeat.bags import open_bag
from zoomfeat.runtime.errors import BagError

FLOAT16_MAX = 65504.0


class BenchWarning(UserWarning):
    """A problem in the benchmark's input that is worked around (and worth reading)."""


def warn(message: str) -> None:
    """Issue a :class:`BenchWarning` attributed to the caller of the reader that found it."""
    warnings.warn(message, BenchWarning, stacklevel=3)


def preview(items: Sequence[Any], n: int = 20) -> str:
    """The first ``n`` items, comma-separated, with the total when there are more (for messages)."""
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def resolve_path(path: str | Path) -> Path:
    """A path, or ``pkg:zoomfeat/...`` for a file shipped inside the package (the MUSK sets)."""
    text = str(path)
    if text.startswith("pkg:"):
        package, _, rest = text[4:].lstrip("/").partition("/")
        return Path(str(resources.files(package).joinpath(rest)))
    return Path(text).expanduser()


@dataclass
class BagSet:
    """One feature set's bags for a cohort, in memory (``bags``) or read on access (``paths``).

    Slides whose bag is empty are not in it (listed in ``skipped``).
    """

    feature_set: str
    source: Path
    slide_ids: list[str]
    case_ids: list[str]
    labels: np.ndarray
    dim: int
    n_instances: np.ndarray
    bags: list[np.ndarray] | None = None
    paths: list[Path] | None = None
    coords: list[np.ndarray | None] | None = None
    skipped: list[str] = field(default_factory=list)
    #: the set's recipe as the bags record it (:mod:`zoomfeat.mil.provenance`; unknown without one)
    provenance: dict[str, Any] = field(default_factory=lambda: {"config_hash": "unknown"})
    #: class names by index, when the set's own file labelled the bags (instance CSVs)
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.slide_ids)

    @property
    def in_memory(self) -> bool:
        """Whether the features are held in memory (else read from ``paths`` on each access)."""
        return self.bags is not None

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.bags) if self.bags is not None else 0

    def features(self, i: int) -> np.ndarray:
        """Bag ``i``'s features (N, D): the stored array (float16/float32) or read from disk."""
        if self.bags is not None:
            return self.bags[i]
        assert self.paths is not None  # a BagSet holds its bags or their paths
        return open_bag(self.paths[i], np.float32).features

    def get_coords(self, i: int) -> np.ndarray | None:
        """Bag ``i``'s tile coordinates (N, 2) as stored in the bag, or None (instance CSVs have none)."""
        if self.coords is not None:
            return self.coords[i]
        if self.paths is not None:
            return open_bag(self.paths[i], np.float32).coords
        return None

    def index(self, slide_ids: Sequence[str]) -> np.ndarray:
        """Positions of ``slide_ids`` in this set (slides it does not hold are skipped)."""
        pos = {s: i for i, s in enumerate(self.slide_ids)}
        return np.asarray([pos[s] for s in slide_ids if s in pos], dtype=np.int64)

    def cohort(self) -> pd.DataFrame:
        """The set's cohort table ``slide_id, case_id, label`` (one row per bag)."""
        return pd.DataFrame({"slide_id": self.slide_ids, "case_id": self.case_ids, "label": self.labels})


def as_dtype(features: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """``features`` as a contiguous ``dtype`` array; a :class:`BagError` if float16 would overflow."""
    if dtype == np.float16 and features.size and np.nanmax(np.abs(features)) > FLOAT16_MAX:
        raise BagError(f"{where}: values exceed the float16 range (65504); use data.dtype=float32")
    return np.ascontiguousarray(features, dtype=dtype)
