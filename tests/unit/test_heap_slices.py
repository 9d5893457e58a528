"""rssbound.heap_slices: a worker whose memory tier never fills touches only the pages of the slices it keeps, not
also those of the origin's chunks they were joined from (W4 at a 3 GiB tier: 370-410 page faults a MiB filled, on a
VM where each is a trip to the host). Counted in a fresh interpreter, whose allocator has freed no large block yet:
the state a worker starts in."""

from __future__ import annotations

import subprocess
import sys

FILL = """
import os, resource, sys
from edgecache.rssbound import heap_slices
if sys.argv[1] == "1":
    heap_slices(2**20)
kept = []  # a memory tier that keeps every slice
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(64):
    chunks = [os.urandom(256 * 1024) for _ in range(4)]  # as the origin client hands them over
    kept.append(b"".join(chunks))  # the slice (proxy.fill._Parts.join)
    del chunks
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 64)
"""


def _faults_per_mib(primed: bool) -> float:
    out = subprocess.run([sys.executable, "-c", FILL, "1" if primed else "0"], capture_output=True, check=True)
    return float(out.stdout)


def test_a_kept_slice_costs_its_own_pages_only() -> None:
    # 256 pages of 4 KiB a MiB; without heap_slices, 481 here (glibc 2.36): each chunk's pages too
    assert _faults_per_mib(primed=True) < 300
