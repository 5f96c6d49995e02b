"""Remote slides: the CMU SVS served by moto's S3 server and by an HTTP server, both on 127.0.0.1.

Read through fsspec + tiffslide, a remote SVS gives the local SVS's tile grid and *equal* pixels
(tiffslide decodes the same JPEG tiles with the same libjpeg-turbo as openslide). Staged with
:class:`~zoomfeat.slide.remote.SlideCache`, it is read by openslide from local disk: the same
reader, quickhash and pixels as the local file. Bad remote input gets one line naming the URL.
"""

from __future__ import annotations

import socket
import warnings

import numpy as np
import pytest

from zoomfeat.runtime.errors import InputNotFoundError, SlideError
from zoomfeat.slide import Slide, TileGrid
from zoomfeat.slide.identity import SlideChangedError
from zoomfeat.slide.manifest import discover
from zoomfeat.slide.remote import SlideCache

pytest.importorskip("s3fs", reason="the remote extra: pip install 'zoomfeat[remote]'")
pytest.importorskip("moto.server", reason="moto[server] (dev extra)")

from servers import FileServer, S3Server  # noqa: E402

GRID = {"progress": False, "lattice": "integer"}
BOXES = [(300.5, 400.25, 512, 0.5), (1900.0, 2700.0, 256, 0.5), (-40.0, -30.0, 128, 0.5)]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """Retry quickly (the number of tries is unchanged: REMOTE_TRIES)."""
    monkeypatch.setattr(Slide, "RETRY_BACKOFF_S", (0.01,))


@pytest.fixture(scope="module")
def s3(cmu_slide):
    with S3Server() as server:
        server.put(cmu_slide, "s3://slides/cohort/CMU-1.svs")
        server.put(cmu_slide, "s3://slides/cohort/CMU-2.svs")
        server.put(None, "s3://slides/bad/truncated.svs", data=cmu_slide.read_bytes()[:900_000])
        yield server


@pytest.fixture(scope="module")
def http(cmu_slide, tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "CMU-1.svs").write_bytes(cmu_slide.read_bytes())
    (root / "truncated.svs").write_bytes(cmu_slide.read_bytes()[:900_000])
    with FileServer(root) as server:
        yield server


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


def test_s3_and_https_slides_give_the_local_grid_and_pixels(cmu_slide, s3, http):
    ref = Slide.open(cmu_slide)
    ref_grid = TileGrid.build(ref, **GRID)
    for url, options in (("s3://slides/cohort/CMU-1.svs", s3.storage_options), (http.url("CMU-1.svs"), None)):
        s = Slide.open(url, storage_options=options)
        assert s.reader == "tiffslide" and s.slide_id == "CMU-1" and s.path == url
        assert s.dimensions == ref.dimensions and s.mpp == ref.mpp
        grid = TileGrid.build(s, **GRID)
        assert np.array_equal(grid.children.xy, ref_grid.children.xy)
        assert np.array_equal(grid.children.kept, ref_grid.children.kept)
        for box in BOXES:
            assert np.array_equal(s.read_region(*box), ref.read_region(*box)), (url, box)
        ident = s.identity()
        assert ident["size"] == cmu_slide.stat().st_size and ident["path"] == url
        assert ident["quickhash"].startswith("zf1:")
        s.check_unchanged()


def test_cache_dir_stages_ahead_reads_with_openslide_and_cleans_up(cmu_slide, s3, tmp_path):
    urls = ["s3://slides/cohort/CMU-1.svs", "s3://slides/cohort/CMU-2.svs"]
    ref = Slide.open(cmu_slide)
    with SlideCache(tmp_path / "cache", storage_options=s3.storage_options) as cache:
        first = cache.stage(urls[0])
        cache.prefetch(urls[1])  # while the first one is read
        s = Slide.open(first, slide_id="CMU-1")
        assert s.reader == "openslide" and s.identity()["quickhash"] == ref.identity()["quickhash"]
        assert np.array_equal(s.read_region(*BOXES[0]), ref.read_region(*BOXES[0]))
        s.close()
        cache.release(urls[0])
        assert not first.exists()
        second = cache.stage(urls[1])
        assert second.read_bytes() == cmu_slide.read_bytes()
        assert set(cache.waits) == set(urls)
    assert not second.exists() and not any((tmp_path / "cache").iterdir())  # close() removed it


def test_a_bucket_prefix_is_listed(s3):
    specs = discover(["s3://slides/cohort/"], storage_options=s3.storage_options)
    assert [(s.slide_id, s.path) for s in specs] == [
        ("CMU-1", "s3://slides/cohort/CMU-1.svs"),
        ("CMU-2", "s3://slides/cohort/CMU-2.svs"),
    ]


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


def test_unreachable_url_is_one_line_after_the_retries():
    url = f"http://127.0.0.1:{_closed_port()}/slides/CMU-1.svs"
    with pytest.raises(SlideError) as err:
        Slide.open(url)
    _one_line(err, url, "cannot open it after 3 tries", "Connect")


def test_missing_key_and_truncated_files_are_one_line(s3, http, tmp_path):
    with pytest.raises(InputNotFoundError) as err:
        Slide.open("s3://slides/cohort/nope.svs", storage_options=s3.storage_options)
    _one_line(err, "no slide at s3://slides/cohort/nope.svs", "bucket and key")
    for url, options in (
        ("s3://slides/bad/truncated.svs", s3.storage_options),
        (http.url("truncated.svs"), None),
    ):
        with pytest.raises(SlideError) as err:
            Slide.open(url, storage_options=options)
        _one_line(err, url, "truncated")
    with pytest.raises(InputNotFoundError) as err, SlideCache(tmp_path / "cache") as cache:
        cache.stage(http.url("missing.svs"))
    _one_line(err, "no slide at " + http.url("missing.svs"))


def test_wrong_credentials_are_refused_in_one_line(cmu_slide):
    """moto checks credentials once told to (its IAM checks); good ones read, wrong ones get 403."""
    with S3Server() as server:
        server.put(cmu_slide, "s3://private/CMU-1.svs")
        server.enforce_credentials()
        assert (
            Slide.open("s3://private/CMU-1.svs", storage_options=server.storage_options).slide_id == "CMU-1"
        )
        wrong = server.options(key="AKIAWRONGKEY", secret="wrong")
        with pytest.raises(SlideError) as err:
            Slide.open("s3://private/CMU-1.svs", storage_options=wrong)
        _one_line(err, "s3://private/CMU-1.svs", "access denied", "credentials")


def test_a_remote_slide_changed_while_read_is_caught(cmu_slide, s3):
    url = "s3://slides/changing/CMU-1.svs"
    s3.put(cmu_slide, url)
    s = Slide.open(url, storage_options=s3.storage_options)
    s.read_region(*BOXES[0])
    s.check_unchanged()
    data = bytearray(cmu_slide.read_bytes())
    data[-1] ^= 0xFF  # the same size, other content: only the ETag tells
    s3.put(None, url, data=bytes(data))
    with pytest.raises(SlideChangedError) as err:
        s.check_unchanged()
    _one_line(err, url, "changed while it was read", "ETag", "not published")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.close()


def test_a_failed_read_is_retried_then_reported(http):
    """Small fsspec blocks, so each region needs requests; the server then fails some of them."""
    url = http.url("CMU-1.svs")
    s = Slide.open(url, storage_options={"block_size": 64 * 1024})
    ref = s.read_region(*BOXES[0])
    fresh = Slide.open(url).read_region(1200.0, 1500.0, 512, 0.5)
    http.fail_next(1)  # one failure: the retry (reopening the slide) reads it
    assert np.array_equal(s.read_region(1200.0, 1500.0, 512, 0.5), fresh)
    assert http.failures_left == 0  # the failure was met (and retried)
    http.fail_next(1000)  # a store that is down: tried REMOTE_TRIES times, then one line
    with pytest.raises(SlideError) as err:
        s.read_region(600.0, 2000.0, 512, 0.5)
    _one_line(err, url, "after 3 tries")
    http.fail_next(0)  # back: the next read works again
    assert np.array_equal(s.read_region(*BOXES[0]), ref)


def _read_in_child(slide: Slide) -> np.ndarray:
    return slide.read_region(*BOXES[0])


def test_a_remote_slide_reopens_in_a_worker_process(s3, cmu_slide):
    """A DataLoader worker gets the pickled slide (URL, reader, storage_options) and reopens it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    s = Slide.open("s3://slides/cohort/CMU-1.svs", storage_options=s3.storage_options)
    with ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("fork")
    ) as pool:  # as DataLoader on Linux
        pixels = pool.submit(_read_in_child, s).result(timeout=120)
    assert np.array_equal(pixels, Slide.open(cmu_slide).read_region(*BOXES[0]))
