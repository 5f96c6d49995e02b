"""Fixtures of the MIL tests (bags from tests/mil/bagfactory.py)."""

from __future__ import annotations

import numpy as np
import pytest

from .bagfactory import planted_bags, write_bags


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """A bag root with two feature sets: ``good`` (planted signal) and ``noise`` (no signal),
    and the labels CSV (IDC/ILC) naming every slide."""
    root = tmp_path_factory.mktemp("planted_bags")
    table, feats = planted_bags(n_cases=40, slides_per_case=1, dim=16, seed=0)
    write_bags(root, "good", feats)
    rng = np.random.default_rng(1)
    write_bags(root, "noise", {s: rng.normal(size=x.shape).astype(np.float32) for s, x in feats.items()})
    labels = root / "labels.csv"
    table.to_csv(labels, index=False)
    return {"root": root, "labels": labels, "table": table, "feats": feats}
