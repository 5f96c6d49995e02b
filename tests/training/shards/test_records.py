"""Per-slide records: atomic writes, listing ignores temporary files, done-ness by hash and mags."""

from __future__ import annotations

from zoomfeat.training.shards.records import list_records, read_record, slide_is_done, write_record

from .conftest import write


def test_records_listing_and_done(tmp_path):
    write(tmp_path, "a", {0: 2, 2: 1})
    (tmp_path / "records" / ".b.json.tmp-1").write_text("{")  # a killed writer's leftover
    assert list(list_records(tmp_path)) == ["a"]
    assert slide_is_done(tmp_path, "a", [0, 2], "h1")
    assert not slide_is_done(tmp_path, "a", [0, 1], "h1") and not slide_is_done(tmp_path, "a", [0], "h2")
    rec = read_record(tmp_path, "a")
    (tmp_path / rec["mags"]["2"]["file"]).unlink()
    assert not slide_is_done(tmp_path, "a", [2], "h1")  # its file is gone
    write_record(tmp_path, {**rec, "note": "x"})
    assert read_record(tmp_path, "a")["note"] == "x" and read_record(tmp_path, "zz") is None
