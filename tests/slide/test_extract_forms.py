"""Slides of every kind through a real extraction run (tiny model, in-process, one thread).

One manifest lists: a symlink under its own name, a DICOM copy under a manifest ``slide_id``, a
slide that is overwritten while it is extracted, and bad inputs (a PNG without ``mpp``, a DICOM
directory with two series, an unreachable URL, a truncated file on an HTTP server). The good
slides finish with bags named as listed; the DICOM copy's bags equal the SVS's (the encoder's
features depend on the pixels only, not on the slide id); each bad slide gets one line naming it; the
changed slide publishes nothing. A second run stages a remote slide in ``cache_dir``.
"""

from __future__ import annotations

import shutil
import socket
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from zoomfeat.features.config import ExtractConfig
from zoomfeat.features.pipeline import SlideHooks
from zoomfeat.features.runner import extract_slides
from zoomfeat.slide.manifest import discover

pytestmark = pytest.mark.usefixtures("one_thread")

#: the tiny encoder's bags only (zoomldm=false): what is tested here is the slides, not the recipe
TINY = {
    "model": "tiny",
    "encoder": "tiny",
    "zoomldm": False,
    "tissue.min_tissue": 0.5,
    "progress": False,
    "num_workers": 0,
}
SET20 = Path("20x_256px_0px_overlap")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bag(out: Path, family: str, slide_id: str, mag: str = "20x") -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(
        out / f"{mag}_256px_0px_overlap" / f"features_{family}_{mag}" / f"{slide_id}.h5", "r"
    ) as f:
        return f["features"][:], f["coords"][:]


def test_one_run_over_every_kind_names_fails_and_publishes_as_promised(
    cmu_slide, cmu_dicom, cmu_png, tmp_path
):
    from servers import FileServer
    from slide_files import dicom_second_series

    src = tmp_path / "in"
    src.mkdir()
    (src / "patient42.svs").symlink_to(cmu_slide)
    shutil.copytree(cmu_dicom, src / "dicom-copy")
    changing = Path(shutil.copy(cmu_slide, src / "changing.svs"))
    shutil.copy(cmu_png, src / "nompp.png")
    shutil.copytree(cmu_dicom, src / "two-series")
    dicom_second_series(cmu_slide, src / "two-series")
    www = tmp_path / "www"
    www.mkdir()
    (www / "truncated.svs").write_bytes(cmu_slide.read_bytes()[:900_000])
    unreachable = f"http://127.0.0.1:{_closed_port()}/gone.svs"

    def rewrite_changing(done: int, total: int) -> None:
        """On the changing slide's first written parent, overwrite it in place (same size)."""
        if state["slide"] == "patient-changing" and not state["rewritten"]:
            data = bytearray(changing.read_bytes())
            data[-1] ^= 0xFF
            changing.write_bytes(bytes(data))
            state["rewritten"] = True

    state = {"slide": "", "rewritten": False}
    hooks = SlideHooks(
        on_slide_start=lambda plan: state.update(slide=plan.slide_id),
        on_batch=rewrite_changing,
    )
    with FileServer(www) as http:
        manifest = tmp_path / "cohort.csv"
        manifest.write_text(
            "path,slide_id\n"
            "in/patient42.svs,\n"
            "in/dicom-copy,patient-dicom\n"
            "in/changing.svs,patient-changing\n"
            "in/nompp.png,\n"
            "in/two-series,\n"
            f"{unreachable},\n"
            f"{http.url('truncated.svs')},\n"
        )
        out = tmp_path / "out"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = extract_slides(
                discover([manifest]), out, ExtractConfig.from_kwargs(**TINY), hooks=hooks
            )
    status = {r.slide_id: r for r in summary.results}
    assert {k: r.status for k, r in status.items()} == {
        "patient42": "done",
        "patient-dicom": "done",
        "patient-changing": "failed",
        "nompp": "failed",
        "two-series": "failed",
        "gone": "failed",
        "truncated": "failed",
    }, summary.report()
    for sid, what in {
        "patient-changing": "changed while it was read",
        "nompp": "no resolution",
        "two-series": "2 DICOM series",
        "gone": "cannot open it after 3 tries",
        "truncated": "truncated",
    }.items():
        error = status[sid].error
        assert "\n" not in error and what in error, (sid, error)
    assert unreachable in status["gone"].error and "nompp.png" in status["nompp"].error
    # the changed slide published nothing; the others their bags, under the names they were listed with
    assert not list(out.rglob("patient-changing*.h5")) and state["rewritten"]
    uni_svs, xy_svs = _bag(out, "uni", "patient42")
    uni_dcm, xy_dcm = _bag(out, "uni", "patient-dicom")
    assert np.array_equal(xy_svs, xy_dcm) and len(xy_svs) > 0
    # equal pixels (the DICOM carries the SVS's JPEG tiles), the same model and batches: equal features
    assert np.array_equal(uni_svs, uni_dcm)
    assert np.array_equal(_bag(out, "uni", "patient42", "5x")[0], _bag(out, "uni", "patient-dicom", "5x")[0])


def test_cache_dir_stages_remote_slides_for_the_run(cmu_slide, synthetic_slide_factory, tmp_path):
    from servers import FileServer

    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(cmu_slide, www / "remote-1.svs")
    cache = tmp_path / "cache"
    with FileServer(www) as http, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = ExtractConfig.from_kwargs(**TINY, cache_dir=str(cache))
        summary = extract_slides(discover([http.url("remote-1.svs")]), tmp_path / "out", cfg)
        assert [r.status for r in summary.results] == ["done"], summary.report()
        with h5py.File(tmp_path / "out" / SET20 / "features_uni_20x" / "remote-1.h5", "r") as f:
            # the bag names the URL it came from, not the cache copy; openslide read it (its quickhash)
            assert f.attrs["slide_path"] == http.url("remote-1.svs")
            assert not str(f.attrs["slide_quickhash"]).startswith("zf1:")
        assert cache.is_dir() and not any(cache.iterdir())  # staged copies removed
        # resume: the same remote slide again is complete (its identity matches), read or not from the bucket
        for again in (cfg, ExtractConfig.from_kwargs(**TINY)):
            summary = extract_slides(discover([http.url("remote-1.svs")]), tmp_path / "out", again)
            assert [r.status for r in summary.results] == ["skipped"], summary.report()
        # another file under the same name in the bucket: refused, in one line, bags untouched
        other = synthetic_slide_factory("other_remote", width=1024, height=1024, mpp=0.5, levels=1)
        shutil.copy(other, www / "remote-1.svs")
        summary = extract_slides(discover([http.url("remote-1.svs")]), tmp_path / "out", cfg)
        (result,) = summary.results
        assert result.status == "failed" and "different slide with the same file name" in result.error


def test_reader_key_is_checked_when_the_config_loads():
    from zoomfeat.runtime.errors import ConfigError

    assert ExtractConfig.from_kwargs(**TINY, reader="wsidicom").reader == "wsidicom"
    with pytest.raises(
        ConfigError, match="reader='bioformats' is not a slide reader; use one of auto, openslide"
    ):
        ExtractConfig.from_kwargs(**TINY, reader="bioformats")
