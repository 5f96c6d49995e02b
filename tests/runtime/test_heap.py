"""zoomfeat.runtime.heap: freed heap pages go back to the OS."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from zoomfeat.runtime.heap import release_freed_memory


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4  # resident pages x 4 KiB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim (Linux)")
def test_freed_small_blocks_are_returned():
    # 4000 blocks of 32 KiB (below glibc's mmap threshold: they live in the heap), written so
    # their pages are resident; every 50th is kept, so the heap is fragmented and cannot shrink
    # from its top alone
    blocks = [np.ones(32 * 1024, np.uint8) for _ in range(4000)]
    kept = blocks[::50]
    del blocks
    before = _rss_kb()
    assert release_freed_memory(min_interval_s=0)  # whenever an earlier test trimmed
    after = _rss_kb()
    # ~125 MB were freed; at least half of it must leave the resident set
    assert before - after > 60_000, (before, after)
    assert len(kept) == 80


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim (Linux)")
def test_a_trim_within_the_interval_is_skipped():
    # freed, resident blocks again, so a trim has something to release
    blocks = [np.ones(32 * 1024, np.uint8) for _ in range(2000)]
    kept = blocks[::50]
    del blocks
    release_freed_memory(min_interval_s=0)  # a trim now
    blocks = [np.ones(32 * 1024, np.uint8) for _ in range(2000)]
    del blocks
    before = _rss_kb()
    assert not release_freed_memory(min_interval_s=3600)  # the last trim is not an hour old
    assert _rss_kb() >= before - 4_000  # nothing given back (a few pages of noise allowed)
    assert release_freed_memory(min_interval_s=0)
    assert len(kept) == 40
