"""Labels tables for the benchmark tasks that need a download (``python -m zoomfeat.tasks``).

``task=brca`` and ``task=hrd`` read a labels CSV built from public TCGA tables the user downloads
(docs/benchmark.md says where): :mod:`zoomfeat.tasks.brca` (GDC clinical TSV -> IDC vs ILC) and
:mod:`zoomfeat.tasks.hrd` (PanCanAtlas HRD scores -> HRD-positive/negative), on the slide
barcodes of :mod:`zoomfeat.tasks.tcga`. :mod:`zoomfeat.tasks.musk3` builds a 3-class instance CSV
from the shipped MUSK sets. The command line is :mod:`zoomfeat.tasks.__main__`.
"""
