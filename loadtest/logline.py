"""The CPU an access-log line costs the event loop: observe.log_line (the record) and accesslog.encode (its JSON line,
what the writer thread's queue takes), for three shapes of line (a hit, a miss, a 502 naming two origins).

    python -m loadtest.logline [--lines 100000] [--repeat 7]

Prints nanoseconds of process CPU time per line, the best of `repeat` runs of `lines` lines each (CPU time, not wall
clock: other processes on the machine do not count), and the length of each line. The writer thread's own work
(joining and writing lines) is not in it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from edgecache.accesslog import AccessLog, encode
from edgecache.core.status import CacheStatus
from edgecache.proxy import observe

_LINE = observe.Line(
    "10.1.2.3",
    "GET",
    "video.example",
    "/v/123/seg-00042.m4s?itag=22",
    "bytes=0-1048575",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
    None,
    "HTTP/1.1",
)


class _Encoding(AccessLog):
    """An access log whose write only encodes the record, as AccessLog.write does before it queues the line."""

    def __init__(self) -> None:
        super().__init__(None)
        self.last = ""

    def write(self, record: dict[str, Any]) -> None:
        self.last = encode(record)


def _trace(status: CacheStatus, *asked: str) -> observe.Trace:
    t = observe.new_trace()
    t.site, t.status, t.origin_ms, t.ttfb = "videos", status, 12.5, 0.013
    for addr in asked:
        t.sources.asked(addr)
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    access = _Encoding()
    shapes = {
        "hit": (_trace(CacheStatus.HIT), "cache", 200),
        "miss": (_trace(CacheStatus.MISS, "10.0.0.5:8080"), "origin", 200),
        "502": (_trace(CacheStatus.ERROR, "10.0.0.5:8080, 10.0.0.6:8080"), "-", 502),
    }
    for name, (t, way, code) in shapes.items():
        best = float("inf")
        for _ in range(args.repeat):
            began = time.process_time()
            for _ in range(args.lines):
                observe.log_line(access, t, _LINE, code, 1_048_576, "node1", way)
            best = min(best, time.process_time() - began)
        print(f"{name:5} {best / args.lines * 1e9:6.0f} ns/line  {len(access.last)} bytes")


if __name__ == "__main__":
    main()
