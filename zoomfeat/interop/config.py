"""``conf/export.yaml`` as a dataclass: what ``python -m zoomfeat.export`` takes (docs/bags.md, "Other MIL tools")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoomfeat.runtime.config import check

#: the tools a mirror can be written for
TARGETS = ("clam", "stamp", "slideflow")


@dataclass
class ExportConfig:
    """Write mirrors of existing bags in another MIL tool's format.

    See ``conf/export.yaml`` for the comments of each key.
    """

    #: the bag directory: an extraction ``out_dir`` (or any TRIDENT job directory); one bare argument
    inputs: list[str] = field(default_factory=list)
    #: clam | stamp | slideflow
    to: str = ""
    #: feature sets to mirror, by name or glob (``uni_*``); a string or a list; empty: every set found
    sets: Any = field(default_factory=list)
    #: where the mirror goes; null: ``{out_dir}/export/{to}``
    dest: str | None = None
    #: level-0 um/px for bags that do not store ``mpp`` (bags of other tools); zoomfeat's bags do
    mpp: float | None = None

    def __post_init__(self) -> None:
        check(
            self.to in TARGETS,
            f"export: to= must be one of {', '.join(TARGETS)}, got {self.to!r} "
            "(e.g. python -m zoomfeat.export features/ to=clam)",
        )
        if self.sets is None:
            self.sets = []
        if isinstance(self.sets, str):
            self.sets = [s.strip() for s in self.sets.split(",") if s.strip()]
        check(
            isinstance(self.sets, (list, tuple)) and all(isinstance(s, str) for s in self.sets),
            f"export: sets must be a feature set name, a glob or a list of them, got {self.sets!r}",
        )
        self.sets = [str(s) for s in self.sets]
        check(self.mpp is None or self.mpp > 0, f"export: mpp must be positive, got {self.mpp}")
