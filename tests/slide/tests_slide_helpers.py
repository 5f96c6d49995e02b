"""Helpers for tests/slide that write files (imported by the tests, not collected)."""

from __future__ import annotations

from pathlib import Path


def dicom_second_series(svs: Path, into: Path) -> None:
    """Add a second series of ``svs`` (a new SeriesInstanceUID) to the directory ``into``."""
    import tempfile

    from conftest import write_dicom

    with tempfile.TemporaryDirectory() as tmp:
        out = write_dicom(svs, Path(tmp) / "again")
        for f in out.iterdir():
            (into / f"second-{f.name}").write_bytes(f.read_bytes())
