"""kyb.heap: freed C-heap memory stays in the process (checked in fresh processes: it is process-wide)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")

# Allocates and frees 40 arrays of 4 MB (each below the 32 MB mmap threshold the module sets), then
# prints how much of the 160 MB the process still holds.
_PROBE = """
import sys
import numpy as np
from kyb.heap import retain_freed_heap

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

took = retain_freed_heap(int(sys.argv[1]))
again = retain_freed_heap(int(sys.argv[1]))
before = resident_mb()
arrays = [np.ones(1 << 19) for _ in range(40)]  # 40 x 4 MB, every page touched
peak = resident_mb()
del arrays
after = resident_mb()
print(took, again, round(peak - before), round(after - before))
"""


def _probe(megabytes: int) -> tuple[bool, bool, float, float]:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(megabytes)], capture_output=True, text=True, check=True)
    took, again, grown, kept = out.stdout.split()
    return took == "True", again == "True", float(grown), float(kept)


def test_freed_memory_is_kept_for_the_next_photo() -> None:
    took, again, grown, kept = _probe(256)
    assert took and again  # glibc took it, and asking again in the same process is harmless
    assert grown >= 150
    assert kept >= 0.9 * grown  # the pages stay mapped: the next photo's buffers need no page faults


def test_zero_leaves_glibc_returning_freed_memory() -> None:
    took, _, grown, kept = _probe(0)
    assert not took
    assert grown >= 150
    assert kept <= 0.2 * grown  # glibc's own policy hands 4 MB chunks straight back (mmap)
