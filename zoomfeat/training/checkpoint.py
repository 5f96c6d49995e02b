"""Training checkpoints on disk: :mod:`zoomfeat.runtime.checkpoints` (moved there, with the layout
and the reasons for it, so the CDM trainer in ``generation/`` writes the same directories); these
names stay for the trainer and its users."""

from __future__ import annotations

from zoomfeat.runtime.checkpoints import (
    CHECKPOINTS_DIR,
    LATEST,
    STATE_FILE,
    checkpoint_root,
    clean_partial,
    find_latest,
    is_complete,
    latest_name,
    list_checkpoints,
    read_state,
    refuse_existing,
    resolve_checkpoint,
    resume_source,
    set_latest,
    step_dir_name,
    write_checkpoint,
)

__all__ = [
    "CHECKPOINTS_DIR",
    "LATEST",
    "STATE_FILE",
    "checkpoint_root",
    "clean_partial",
    "find_latest",
    "is_complete",
    "latest_name",
    "list_checkpoints",
    "read_state",
    "refuse_existing",
    "resolve_checkpoint",
    "resume_source",
    "set_latest",
    "step_dir_name",
    "write_checkpoint",
]
