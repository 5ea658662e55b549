"""Keep the C heap's freed memory in the process instead of handing it back after every photo.

A photo's SIFT allocates ~150 MB of scale-space images (a 640-px photo enlarged to 1,000 px is a
2,000 x 1,500 float base image, and each octave has six such levels) and frees them at the end.
glibc's malloc then returns the top of the heap to the kernel once more than its trim threshold is
free (by default twice the largest chunk freed from mmap, so ~25 MB after the first photo), and the
next photo takes the same pages back one page fault at a time, each zero-filled. On this project's
2-core virtual machine that made one SIFT 1.7-1.9x slower in the engine's process (218 -> 124 ms
per landmarks photo, docs/engine.md "The heap kept between photos"), and whether it happened hung
on the heap's layout after imports: `import string` alone flipped a bare SIFT loop from 123 to 221
ms.

:func:`retain_freed_heap` fixes both glibc thresholds (which also ends their adjustment at run
time): chunks below 32 MB (the most glibc takes) come from the heap, and freed memory at the heap's
top is returned only beyond the retained size. The cost is resident memory up to that size that a
busy process would take again anyway. Elsewhere than glibc (musl, macOS) it changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading

__all__ = ["retain_freed_heap"]

log = logging.getLogger(__name__)

# mallopt parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit.
_MMAP_THRESHOLD_BYTES = 32 << 20

_lock = threading.Lock()
_applied: int | None = None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on, not the machine's
    except AttributeError:
        return os.cpu_count() or 2


def retain_freed_heap(megabytes: int) -> bool:
    """Lets the process keep up to ``megabytes`` of freed heap (0: leave glibc's defaults).

    Process-wide and idempotent; the first non-zero size asked for wins (one process holds one
    engine or one service). Returns True when glibc took the setting.
    """
    global _applied
    if megabytes <= 0:
        return False
    with _lock:
        if _applied is not None:
            return _applied > 0
        _applied = 0
        if platform.libc_ver()[0] != "glibc":
            log.debug("not glibc: the C heap keeps its own policy")
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            took = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
            took = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(megabytes << 20, 2**31 - 1))) == 1 and took
            # A thread's own arena (a gRPC worker's) is carved from 64 MB heaps that it maps and
            # unmaps as SIFT's buffers come and go, whatever the thresholds; with one arena per core
            # the workers share arenas that stay mapped (a worker's SIFT 138 -> 120 ms).
            took = libc.mallopt(_M_ARENA_MAX, max(2, _usable_cores())) == 1 and took
        except (OSError, AttributeError) as exc:
            log.warning("could not set the C heap's thresholds (%s); photos may encode slower", exc)
            return False
        _applied = megabytes if took else 0
        if not took:
            log.warning("glibc refused the C heap's thresholds; photos may encode slower")
        return took
