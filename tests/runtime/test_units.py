"""zoomfeat.runtime.units: one magnification table, indices and magnifications never confused."""

from __future__ import annotations

import pytest

from zoomfeat.runtime.units import (
    CHILDREN_PER_SIDE,
    NUM_MAGS,
    PARENT_MAG_INDEX,
    grid_side,
    mag_index,
    mag_name,
    magnification,
)


def test_table():
    assert [mag_name(m) for m in range(NUM_MAGS)] == [
        "20x", "10x", "5x", "2.5x", "1.25x", "0.625x", "0.3125x", "0.15625x"
    ]  # fmt: skip
    assert all(mag_index(magnification(m)) == m for m in range(NUM_MAGS))
    assert magnification(PARENT_MAG_INDEX) == 5.0
    assert 2**PARENT_MAG_INDEX == CHILDREN_PER_SIDE  # a 5x parent covers 4x4 20x children


def test_grid_sides_pool_at_eight():
    assert [grid_side(m) for m in range(NUM_MAGS)] == [1, 2, 4, 8, 8, 8, 8, 8]


def test_unknown_magnification_lists_the_levels():
    with pytest.raises(ValueError, match=r"40x is not one of ZoomLDM's levels \(20x, 10x"):
        mag_index(40)


def test_per_domain_tables():
    from zoomfeat.runtime.units import MAG_TABLES, domain_mag_index, mag_names_for

    assert MAG_TABLES["brca"] == tuple(mag_name(m) for m in range(NUM_MAGS))
    assert MAG_TABLES["naip"] == ("1x", "2x", "3x", "4x")
    assert domain_mag_index("naip", "3x") == 2 and domain_mag_index("brca", "5") == 2
    assert mag_names_for(4) == MAG_TABLES["naip"] and mag_names_for(8) == MAG_TABLES["brca"]
    with pytest.raises(ValueError, match=r"'5x' is not one of the naip model's levels \(1x, 2x, 3x, 4x\)"):
        domain_mag_index("naip", "5x")
