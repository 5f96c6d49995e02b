"""A 3-class MIL set from the two shipped MUSK sets: musk1-negative / musk1-positive / musk2-positive.

Real data, honest construction (documented here and in the report note):

* MUSK1 (92 molecules, 47 musk) and MUSK2 (102 molecules, 39 musk) are the Dietterich et al.
  (1997) sets shipped in ``zoomfeat/data/mil/`` (one row per conformation: label, molecule id,
  166 features). The three classes are all MUSK1 bags by their label plus the MUSK2 *musk*
  bags: 45 / 47 / 39 bags (MUSK2's non-musks are left out, so no class is the union of two sets).
* Each bag (molecule) is its own patient; bag ids are prefixed ``m1_`` / ``m2_``.
* Caveats: telling musk1-positive from musk2-positive is partly telling the *data set* apart
  (MUSK2 was sampled with more conformations per molecule: 65 vs 5 instances per bag on
  average), not only chemistry; and the two sets may share molecules (the files carry numeric
  ids only, so shared molecules cannot be grouped into one patient). No instance row is shared
  between the files (checked when this was built). Read the figures as a 3-class benchmark of
  the MIL machinery on real instance features, not as a chemistry result.

    python -m zoomfeat.tasks musk3 --out musk3.csv
    python -m zoomfeat.bench task=custom task.name=musk3 task.bags=musk3.csv \
        'task.csv={label_col: 0, bag_col: 1, header: false}' feature_sets=[instances] baseline=null \
        mil.hidden=[128] mil.lr=5e-4 mil.epochs=100 mil.patience=20 mil.min_epochs=20 mil.warmup=15 mil.amp=false
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from zoomfeat.runtime.resources import package_data

CLASSES = ("musk1-negative", "musk1-positive", "musk2-positive")


def build(out: str | Path) -> Path:
    """Write the 3-class instance CSV (label name, bag id, 166 features; no header) to ``out``."""
    frames = []
    for name in ("musk1", "musk2"):
        table = pd.read_csv(package_data("mil", f"{name}.csv"), header=None)
        if name == "musk2":
            table = table[table[0] == 1]
        label = table[0].map({0: f"{name}-negative", 1: f"{name}-positive"})
        table = table.copy()
        table[0], table[1] = label, f"m{name[-1]}_" + table[1].astype(str)
        frames.append(table)
    data = pd.concat(frames, ignore_index=True)
    assert sorted(data[0].unique()) == list(CLASSES)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data.to_csv(out, header=False, index=False)
    return out
