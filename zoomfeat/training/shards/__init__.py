"""Multi-scale training shards: HDF5 files per magnification index, written slide by slide.

One module per job: the format and its constants (:mod:`.format`), per-slide resume records
(:mod:`.records`), writing slides (:mod:`.writer`), packing small files (:mod:`.pack`) and
reading tiles back (:mod:`.reader`). The layout is in :mod:`.format` and in
docs/ARCHITECTURE.md, "Training".
"""

from zoomfeat.training.shards.format import (
    DATASET_FILE,
    FORMAT_VERSION,
    LATENT_SHAPE,
    MAG_NAMES,
    MAX_GRID,
    NUM_MAGS,
    RECORDS_DIR,
    ShardError,
    ShardsNotFoundError,
    dataset_info,
    ensure_dataset_info,
    grid_side,
    parse_mag,
    pool_grid,
)
from zoomfeat.training.shards.reader import MagSegments, ShardIndex, ShardReader
from zoomfeat.training.shards.records import (
    list_records,
    read_record,
    record_path,
    slide_is_done,
    write_record,
)
from zoomfeat.training.shards.writer import ShardWriter, SlideShardWriter

__all__ = [
    "DATASET_FILE",
    "FORMAT_VERSION",
    "LATENT_SHAPE",
    "MAG_NAMES",
    "MAX_GRID",
    "NUM_MAGS",
    "RECORDS_DIR",
    "MagSegments",
    "ShardError",
    "ShardIndex",
    "ShardReader",
    "ShardWriter",
    "ShardsNotFoundError",
    "SlideShardWriter",
    "dataset_info",
    "ensure_dataset_info",
    "grid_side",
    "list_records",
    "parse_mag",
    "pool_grid",
    "read_record",
    "record_path",
    "slide_is_done",
    "write_record",
]
