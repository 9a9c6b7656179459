"""Process-wide malloc settings for a long files backup's own process.

glibc's malloc raises its mmap threshold each time a large block served by mmap is
freed, up to 32 MiB: from then on the index's column arrays, pack buffers and
decompressed trees (hundreds of KB to MBs, allocated and freed all the time) come from
the heap, where small long-lived objects between them keep the freed space from going
back to the system. A backup of 300,000 small files grew from 125 to 211 MiB that way.
Fixing the threshold (and the trim threshold) at 128 KiB, as the ``MALLOC_MMAP_THRESHOLD_``
and ``MALLOC_TRIM_THRESHOLD_`` environment variables would, keeps such blocks in their
own mappings, returned when freed: the same backup stays at 118-160 MiB.

``tune_malloc``: used by a files backup whose content goes to reader processes
(engine/sources/files.py): its own process then only walks, claims chunks and writes
trees and index rows. Not in the readers, nor for restores or database streams, whose
megabyte-sized buffers would each cost a mapping and its page faults (a 1 GiB initial
backup with the readers tuned too took 15-20% longer; a restore whose forked writers
inherited it, 6% longer).

``keep_freed``: the opposite, for a worker that reuses megabyte-sized buffers (restore's
forked writers, verify's pack workers): they come from the heap and stay there when freed,
for the next blob or pack, instead of a fresh mapping and its page faults each time.

Only on glibc; elsewhere (or for tune_malloc, when the environment already sets them),
nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024
_result: bool | None = None  # what the first call did


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True when they are set."""
    global _result
    if _result is None:
        _result = _set_thresholds()
    return _result


def _set_thresholds() -> bool:
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, THRESHOLD))


def keep_freed(mmap_threshold: int, trim_threshold: int) -> bool:
    """A worker process that reuses large buffers: blocks up to ``mmap_threshold`` bytes
    come from the heap instead of a fresh mapping each, and up to ``trim_threshold`` bytes
    of freed memory stay at the heap's top for the next ones (no page fault per 4 KiB of
    each); True when set. Used by restore's forked writers and verify's pack workers."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def _mallopt():
    """glibc's ``mallopt``, or None (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
