"""One plan per slide (issue 19): a run opens each HDF5 output file at most once.

Every ``h5py.File`` opened in this process is recorded by wrapping ``h5py.File.__init__`` (the
real open still happens; ``num_workers=0`` keeps every open in this process), as
``benchmarks/hdf5_opens.py`` does on the demo slide.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import h5py
import pytest

from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.runner import extract_slides
from zoomfeat.features.writer import slide_outputs
from zoomfeat.slide.manifest import discover

_TMP = re.compile(r"^\.(?P<name>.+\.h5)\.tmp-\d+$")


def _final_name(path: str) -> str:
    name = Path(path).name
    m = _TMP.match(name)
    return m.group("name") if m else name


@pytest.fixture
def opens(monkeypatch) -> Counter:
    """``Counter`` of HDF5 opens by output file (``{mag dir}/{set dir}/{final name}``)."""
    counts: Counter = Counter()
    real = h5py.File.__init__

    def counting(self, name, *args, **kwargs):
        if isinstance(name, (str, bytes, os.PathLike)):  # an open (h5py also wraps open FileIDs)
            p = Path(os.fsdecode(name))
            counts[f"{p.parent.parent.name}/{p.parent.name}/{_final_name(str(p))}"] += 1
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.File, "__init__", counting)
    return counts


def _run(slide_dir: Path, out: Path, config: ExtractConfig) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = extract_slides(discover([slide_dir]), out, config, echo=lambda m: None)
    assert summary.ok, summary.report()


def _files(out: Path) -> dict[str, tuple[int, int]]:
    return {
        f"{p.parent.parent.name}/{p.parent.name}/{p.name}": (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out.rglob("*.h5")
        if not p.name.startswith(".")
    }


def test_a_run_opens_each_output_file_at_most_once(small_slides, tiny, tmp_path, opens):
    """det_b alone: a fresh run (with the preview, which paints features read back from the open
    files) opens only the 8 files it writes, once each; a rerun over the complete bags opens each
    of the 8 existing files once (its plan) and writes nothing; adding a recipe opens the 8
    existing files once and the 3 new bags once."""
    slide_dir = tmp_path / "slides"
    slide_dir.mkdir()
    shutil.copy(small_slides / "det_b.svs", slide_dir / "det_b.svs")
    out = tmp_path / "out"
    config = ExtractConfig.from_kwargs(**tiny, num_workers=0, batch_size=8)

    _run(slide_dir, out, config.replace(preview=True))
    written = _files(out)
    assert len(written) == len(slide_outputs(out, "det_b")) == 8
    assert sum(opens.values()) <= len(written) and max(opens.values()) == 1, opens  # written + 0 existing

    opens.clear()
    _run(slide_dir, out, config)
    assert _files(out) == written  # a rerun writes nothing
    assert sum(opens.values()) <= len(written) and max(opens.values()) == 1, (
        opens
    )  # one open per existing file

    opens.clear()
    more = {**tiny, "num_workers": 0, "batch_size": 8, "features.recipes": [{"timestep": 50}]}
    _run(slide_dir, out, ExtractConfig.from_kwargs(**more))
    after = _files(out)
    new = {k for k in after if written.get(k) != after[k]}
    assert len(new) == 3 and all("zoomldm-t50" in k for k in new)  # the new family's three bags
    assert sum(opens.values()) <= len(new) + len(written) and max(opens.values()) == 1, opens
