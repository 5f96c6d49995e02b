"""Other MIL tools' formats: mirrors of zoomfeat's (TRIDENT-layout) bags for CLAM, STAMP, slideflow.

    from zoomfeat.interop import export_bags
    export_bags("features/", "clam")          # features/export/clam/{set}/pt_files, h5_files

The command line is ``python -m zoomfeat.export OUT_DIR to=clam|stamp|slideflow`` (conf/export.yaml).
"""

from .config import TARGETS, ExportConfig
from .mirrors import ExportResult, FeatureSet, export_bags, find_feature_sets

__all__ = ["TARGETS", "ExportConfig", "ExportResult", "FeatureSet", "export_bags", "find_feature_sets"]
