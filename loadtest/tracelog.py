"""The player-like trace of loadtest/efficiency.py written as an edgecache access log, for `edgecache simulate`.

    python -m loadtest.tracelog docs/player-trace.log.gz [--seed 1] [--objects 3000] [--sessions 8000]

Each request of efficiency.plays() (2 MiB ranges with seeks and early stops over Zipf-popular video objects, and
prefetches of popular objects' first slices) becomes the line a node writes for it (accesslog.encode): a GET of
/v/<object>.mp4 with its Range, answered 206 with the bytes the object has there. The cache status is left out:
the trace says what viewers asked for, not what any cache did. A .gz name is written gzip with no time stamp, so
the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from edgecache.accesslog import encode
from loadtest.efficiency import object_sizes, plays

SITE, HOST = "videos", "video.test"


def lines(seed: int, objects: int, sessions: int) -> Iterator[str]:
    """The trace's access-log lines, in order (no newlines)."""
    rnd = random.Random(seed)
    sizes = object_sizes(rnd, objects)
    for session in plays(rnd, sizes, sessions):
        for obj, pos, length in session:
            served = min(pos + length, sizes[obj]) - pos
            record = {
                "site": SITE,
                "method": "GET",
                "host": HOST,
                "path": f"/v/{obj}.mp4",
                "range": f"bytes={pos}-{pos + length - 1}",
                "status": 206,
                "bytes": served,
            }
            yield encode(record)


def write(path: Path, seed: int, objects: int, sessions: int) -> int:
    """Write the trace to `path` (gzip when it ends in .gz); the number of lines."""
    n = 0
    with open(path, "wb") as raw:
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.suffix == ".gz" else raw
        with out:
            for line in lines(seed, objects, sessions):
                out.write(line.encode("ascii") + b"\n")
                n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--objects", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=8000)
    args = ap.parse_args()
    n = write(args.out, args.seed, args.objects, args.sessions)
    print(f"{args.out}: {n} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
