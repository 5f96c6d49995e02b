"""README's key tables against the config dataclasses (docs/ARCHITECTURE.md, "Configs").

Each table in README.md that follows a ``<!-- config-table: NAME -->`` marker documents the keys
of one entry point's config. The test checks both directions: every key the table names exists
in the dataclass (a renamed or removed option cannot stay documented), and every leaf key of the
dataclass is documented, either itself or through a section it belongs to (``model`` covers
``model.unet.*``), so a new option cannot be added without its line in the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zoomfeat.runtime.config import iter_keys

README = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def _schemas() -> dict[str, type]:
    from zoomfeat.features.config import ExtractConfig
    from zoomfeat.mil.config import BenchmarkConfig
    from zoomfeat.training.config import PrepareConfig, TrainConfig

    return {
        "extract": ExtractConfig,
        "bench": BenchmarkConfig,
        "prepare": PrepareConfig,
        "train": TrainConfig,
    }


def _tables() -> dict[str, list[str]]:
    """NAME -> the backticked keys in the first column of the table after its marker."""
    tables: dict[str, list[str]] = {}
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"<!-- config-table: (\w+) -->", line.strip())
        if not m:
            continue
        keys: list[str] = []
        for row in lines[i + 1 :]:
            if not row.startswith("|"):
                if keys or not row.strip() == "":
                    break
                continue
            first = row.split("|")[1]
            keys += re.findall(r"`([\w.]+)`", first)
        tables[m[1]] = keys
    return tables


def _documented(key: str, documented: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1))


@pytest.mark.parametrize("name", ["extract", "bench", "prepare", "train"])
def test_readme_table_matches_the_config_dataclass(name):
    tables = _tables()
    assert name in tables, f"README.md has no <!-- config-table: {name} --> table"
    documented = set(tables[name])
    leaves = [k for k, _ in iter_keys(_schemas()[name])]
    sections = {".".join(k.split(".")[:n]) for k in leaves for n in range(1, len(k.split(".")))}
    unknown = sorted(documented - set(leaves) - sections)
    assert not unknown, f"README documents {name} keys that do not exist: {unknown}"
    missing = sorted(k for k in leaves if not _documented(k, documented))
    assert not missing, f"{name} keys missing from README's table: {missing}"


def test_the_checker_finds_an_undocumented_key():
    assert not _documented("features.timestep", {"features.taps", "seed"})
    assert _documented("model.unet.model_channels", {"model"})
