"""`edgecache usage ACCESS_LOG...`: the totals a bill or a peering report needs, per site or per day.

The log is read a line at a time (plain or gzip-rotated files, in the order given), so memory stays constant
whatever its size: one total per site or day, and a line is read at most MAX_LINE bytes at a time. A line that
is not one of our JSON records (cut by a crash, or another program's) is skipped and counted.

Served bytes are split by the line's `upstream` (observe.upstream): "cache", "origin", "peer", and
"cache+origin" for a stored entry some of whose slices were fetched meanwhile (its bytes cannot be split
further). The byte hit ratio is the share of served bytes that came from the cache alone. Origin and peer bytes
here are the bytes *served* that came from there; what the node fetched (whole slices, ahead of readers) is in
edgecache_origin_bytes_total and edgecache_peer_forwarded_bytes_total.

A line with `for_peer` true is a request another node of the cluster forwarded for its viewer: that node's own
line counts the viewer's request (upstream "peer"), so such lines are totalled apart (for_peers_requests,
for_peers_bytes), and the logs of every node of a cluster add up to what its viewers were served.

A line with `prefetch` true is a request of the node's own prefetch jobs (admin API): no viewer was served, so it
is totalled apart too (prefetch_requests, prefetch_bytes: what the jobs read), never in the served bytes or the
byte hit ratio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO

MAX_LINE = 64 * 1024  # the writer's lines are far shorter: a longer one is not ours
_GZIP = b"\x1f\x8b"
_SOURCES = {"cache": "cache_bytes", "origin": "origin_bytes", "peer": "peer_bytes", "cache+origin": "mixed_bytes"}


@dataclass(slots=True)
class Totals:
    requests: int = 0
    served_bytes: int = 0
    cache_bytes: int = 0
    origin_bytes: int = 0
    peer_bytes: int = 0
    mixed_bytes: int = 0  # upstream "cache+origin"
    for_peers_requests: int = 0  # served to a node of the cluster for its viewer: not in the counts above
    for_peers_bytes: int = 0
    prefetch_requests: int = 0  # the node's own prefetch: not in the counts above either
    prefetch_bytes: int = 0

    @property
    def byte_hit_ratio(self) -> float:
        return self.cache_bytes / self.served_bytes if self.served_bytes else 0.0

    def add(self, nbytes: int, upstream: str | None, for_peer: bool = False, prefetch: bool = False) -> None:
        if prefetch:
            self.prefetch_requests += 1
            self.prefetch_bytes += nbytes
            return
        if for_peer:
            self.for_peers_requests += 1
            self.for_peers_bytes += nbytes
            return
        self.requests += 1
        self.served_bytes += nbytes
        field = _SOURCES.get(upstream or "")
        if field is not None:  # "-" (the node's own answers) and lines of older versions: served only
            setattr(self, field, getattr(self, field) + nbytes)


@dataclass(slots=True)
class Usage:
    groups: dict[str, Totals]
    malformed: int = 0


def group_of(record: dict[str, object], by: str) -> str | None:
    """The record's site, or its day (the date of its local time stamp); None when it has none."""
    value = record.get("site") if by == "site" else record.get("time")
    if not isinstance(value, str):
        return None
    if by == "day":
        return value[:10] if len(value) >= 10 else None
    return value


def aggregate(lines: Iterable[bytes], by: str = "site") -> Usage:
    """Totals per group of the access-log lines given; a line that is not a whole record is counted, not used."""
    usage = Usage({})
    for raw in lines:
        record = parse_record(raw) or {}
        group = group_of(record, by)
        nbytes = record.get("bytes")
        if group is None or not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
            usage.malformed += 1
            continue
        totals = usage.groups.get(group)
        if totals is None:
            totals = usage.groups[group] = Totals()
        upstream = record.get("upstream")
        way = upstream if isinstance(upstream, str) else None
        totals.add(nbytes, way, record.get("for_peer") is True, record.get("prefetch") is True)
    return usage


def parse_record(raw: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return None
    return value if isinstance(value, dict) else None


def read_lines(paths: Iterable[Path]) -> Iterator[bytes]:
    """Every complete line of the files in turn (gzip ones by their magic bytes); a line longer than MAX_LINE
    is yielded as one short invalid line, never held whole."""
    for path in paths:
        try:
            with open(path, "rb") as plain:
                gz = plain.read(2) == _GZIP
                plain.seek(0)
                if gz:
                    with gzip.open(plain, "rb") as unzipped:
                        yield from _lines(unzipped)
                else:
                    yield from _lines(plain)
        except (OSError, EOFError) as exc:  # missing, unreadable, a corrupt or cut .gz
            raise OSError(f"{path}: {exc}") from exc


def _lines(f: IO[bytes] | gzip.GzipFile) -> Iterator[bytes]:
    while True:
        line = f.readline(MAX_LINE)
        if not line:
            return
        if line.endswith(b"\n") or len(line) < MAX_LINE:
            yield line.rstrip(b"\n")
            continue
        while line and not line.endswith(b"\n"):  # an over-long line: skip to its end, a piece at a time
            line = f.readline(MAX_LINE)
        yield b"\x00"  # counted as malformed


_COUNTS = (
    "requests",
    "served_bytes",
    "cache_bytes",
    "origin_bytes",
    "peer_bytes",
    "mixed_bytes",
    "for_peers_bytes",
    "prefetch_bytes",
)


def render(usage: Usage, by: str) -> str:
    """A table: one row per group in name order, then the total, then the malformed count."""
    header = (by, "requests", "served", "cache", "origin", "peer", "cache+origin", "for_peers", "prefetch", "byte_hit")
    named = [*sorted(usage.groups.items()), ("TOTAL", total_of(usage))]
    rows = [header, *((name, *(str(getattr(t, c)) for c in _COUNTS), f"{t.byte_hit_ratio:.4f}") for name, t in named)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out = [
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        for row in rows
    ]
    out.append(f"malformed lines skipped: {usage.malformed}")
    return "\n".join(out) + "\n"


def as_json(usage: Usage, by: str) -> str:
    def numbers(t: Totals) -> dict[str, object]:
        return {**asdict(t), "byte_hit_ratio": round(t.byte_hit_ratio, 6)}

    groups = {name: numbers(t) for name, t in sorted(usage.groups.items())}
    doc = {"by": by, "groups": groups, "total": numbers(total_of(usage)), "malformed": usage.malformed}
    return json.dumps(doc, indent=2) + "\n"


def total_of(usage: Usage) -> Totals:
    total = Totals()
    for t in usage.groups.values():
        for f in fields(Totals):
            setattr(total, f.name, getattr(total, f.name) + getattr(t, f.name))
    return total


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    u = sub.add_parser("usage", help="requests and bytes per site or day from access logs (for bills, peering)")
    u.add_argument("logs", nargs="+", type=Path, metavar="ACCESS_LOG", help="access log files, plain or .gz")
    u.add_argument("--by", choices=("site", "day"), default="site", help="group by site (default) or by day")
    u.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        usage = aggregate(read_lines(args.logs), args.by)
    except OSError as exc:  # a missing or unreadable file, a corrupt .gz
        print(f"edgecache usage: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(as_json(usage, args.by) if args.json else render(usage, args.by))
    return 0
