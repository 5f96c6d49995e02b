"""Remote slides staged on local disk: ``cache_dir=`` copies each slide ahead of its extraction.

Reading a slide straight from a bucket (tiffslide through fsspec) costs one round trip per tile
read that misses fsspec's block cache. With ``cache_dir`` the whole file is copied to local disk
first (one streamed download), read there by the usual reader (openslide for an SVS: the same
reader, quickhash and pixels as a local copy), and removed when its slide is done. While slide
``i`` is extracted, slide ``i + 1`` is downloaded in a background thread (:meth:`SlideCache.prefetch`),
so with prefetching the stall between slides is what is left of a download once the previous
slide's extraction is over (zero when extraction takes longer than the download).

A download that fails is retried (:attr:`SlideCache.tries` times, with backoff), then reported as
a :class:`~zoomfeat.runtime.errors.SlideError` naming the URL; a download whose size differs from
the object's size (a truncated transfer), or an object whose ETag changes during the download, is
retried the same way.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zoomfeat.runtime.errors import InputError, InputNotFoundError, SlideError
from zoomfeat.slide.backends import is_url
from zoomfeat.slide.identity import remote_fs, remote_info

#: bytes copied per read while staging
CHUNK = 8 * 1024 * 1024


def _name(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "slide"


class SlideCache:
    """Stage remote slides in ``cache_dir``, one slide ahead.

    >>> cache = SlideCache("/scratch/zf", storage_options={"anon": True})
    >>> local = cache.stage("s3://bucket/a.svs")   # waits for (or does) the download
    >>> cache.prefetch("s3://bucket/b.svs")        # the next one, in the background
    >>> ...                                        # extract a from `local`
    >>> cache.release("s3://bucket/a.svs")         # its copy is removed

    Local paths pass through untouched (``stage`` returns them, ``release`` leaves them).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        storage_options: Mapping[str, Any] | None = None,
        tries: int = 3,
        backoff_s: tuple[float, ...] = (0.2, 1.0, 3.0),
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.storage_options = dict(storage_options or {})
        self.tries = max(1, int(tries))
        self.backoff_s = backoff_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoomfeat-prefetch")
        self._futures: dict[str, Future[Path]] = {}
        self._lock = threading.Lock()
        #: seconds :meth:`stage` waited for each URL (the stall its extraction saw)
        self.waits: dict[str, float] = {}

    def local_path(self, url: str) -> Path:
        """Where ``url`` is staged: ``cache_dir/<12 hex of the URL's hash>/<its file name>``."""
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        return self.cache_dir / digest / _name(url)

    def prefetch(self, url: str) -> None:
        """Start downloading ``url`` in the background (no-op for a local path or one already started)."""
        if not is_url(url):
            return
        with self._lock:
            if url not in self._futures:
                self._futures[url] = self._pool.submit(self._download, url)

    def stage(self, url: str) -> Path:
        """The local copy of ``url`` (downloading it now unless a prefetch did or is doing it); a
        local path is returned as it is. Raises :class:`SlideError` naming the URL after the tries."""
        if not is_url(url):
            return Path(url)
        t0 = time.perf_counter()
        self.prefetch(url)
        try:
            return self._futures[url].result()
        finally:
            self.waits[url] = time.perf_counter() - t0

    def release(self, url: str) -> None:
        """Remove the local copy of ``url`` (and forget it)."""
        if not is_url(url):
            return
        with self._lock:
            future = self._futures.pop(url, None)
        if future is not None:
            future.cancel()
            try:
                future.result()
            except Exception:  # its error was (or will not be) reported by stage()
                pass
        shutil.rmtree(self.local_path(url).parent, ignore_errors=True)

    def close(self) -> None:
        """Stop prefetching and remove every copy still staged."""
        for url in list(self._futures):
            self.release(url)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SlideCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ download
    def _download(self, url: str) -> Path:
        dest = self.local_path(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        last: BaseException | None = None
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self.backoff_s[min(attempt - 1, len(self.backoff_s) - 1)])
            try:
                return self._copy_once(url, dest)
            except (FileNotFoundError, PermissionError) as err:
                raise self._error(url, err, attempt + 1) from err
            except Exception as err:  # network errors of fsspec's clients, short transfers
                last = err
        assert last is not None
        raise self._error(url, last, self.tries) from last

    def _copy_once(self, url: str, dest: Path) -> Path:
        before = remote_info(url, self.storage_options)
        size = int(before.get("size") or -1)
        fs, path = remote_fs(url, self.storage_options)
        part = dest.with_name(dest.name + ".part")
        copied = 0
        with fs.open(path, "rb", block_size=CHUNK, cache_type="none") as src, part.open("wb") as out:
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                copied += len(chunk)
        if size >= 0 and copied != size:
            raise OSError(f"short transfer: {copied} of {size} bytes")
        after = remote_info(url, self.storage_options)
        if after.get("ETag", after.get("size")) != before.get("ETag", before.get("size")):
            raise OSError("the object changed during the download")
        part.replace(dest)
        return dest

    @staticmethod
    def _error(url: str, err: BaseException, tries: int) -> InputError:
        what = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        if isinstance(err, FileNotFoundError):
            return InputNotFoundError(f"no slide at {url} ({what}): check the bucket, key and endpoint")
        if isinstance(err, PermissionError):
            return SlideError(f"{url}: access denied ({what}); check the credentials or storage_options")
        return SlideError(f"{url}: cannot stage it in cache_dir after {tries} tries ({what})")
