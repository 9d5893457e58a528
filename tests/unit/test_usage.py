"""`edgecache usage`: totals per site or day from plain and gzip-rotated logs, malformed lines skipped and
counted, a line of any length read in bounded pieces."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pytest

from edgecache import cli
from edgecache.usagecmd import MAX_LINE, Totals, aggregate, read_lines, render


def line(site: str, nbytes: int, upstream: str, time: str = "2026-12-01T10:00:00+0000") -> bytes:
    record = {"time": time, "site": site, "status": 200, "bytes": nbytes, "upstream": upstream}
    return json.dumps(record).encode()


def test_totals_by_site_split_by_upstream() -> None:
    usage = aggregate(
        [
            line("a", 100, "cache"),
            line("a", 10, "origin"),
            line("a", 7, "cache+origin"),
            line("b", 50, "peer"),
            line("b", 0, "-"),  # an error of the node's own: a request, no source
        ]
    )
    assert usage.malformed == 0
    assert usage.groups == {
        "a": Totals(requests=3, served_bytes=117, cache_bytes=100, origin_bytes=10, mixed_bytes=7),
        "b": Totals(requests=2, served_bytes=50, peer_bytes=50),
    }
    assert usage.groups["a"].byte_hit_ratio == 100 / 117
    assert usage.groups["b"].byte_hit_ratio == 0.0


def test_lines_served_for_a_peer_are_totalled_apart() -> None:
    """The owner's line of a forwarded request: its viewer's request is the forwarding node's line."""
    forwarded = json.dumps({"site": "a", "bytes": 9, "upstream": "origin", "for_peer": True}).encode()
    usage = aggregate([line("a", 9, "peer"), forwarded, line("a", 1, "cache")])
    assert usage.groups == {
        "a": Totals(requests=2, served_bytes=10, cache_bytes=1, peer_bytes=9, for_peers_requests=1, for_peers_bytes=9),
    }


def test_totals_by_day() -> None:
    usage = aggregate(
        [
            line("a", 1, "cache", "2026-12-01T23:59:59+0100"),
            line("b", 2, "origin", "2026-12-01T00:00:00+0100"),
            line("a", 4, "cache", "2026-12-02T00:00:00+0100"),
        ],
        by="day",
    )
    assert usage.groups == {
        "2026-12-01": Totals(requests=2, served_bytes=3, cache_bytes=1, origin_bytes=2),
        "2026-12-02": Totals(requests=1, served_bytes=4, cache_bytes=4),
    }


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"site": "a", "time": "2026-12-01T00:00:00+0000"}',  # no bytes
        b'{"site": "a", "bytes": -1}',
        b'{"site": "a", "bytes": true}',
        b'{"site": "a", "bytes": 1.5}',
        b'{"site": 3, "bytes": 1}',
        b'{"site": "a", "bytes": 1',  # cut by a crash
    ],
)
def test_a_malformed_line_is_counted_and_skipped(bad: bytes) -> None:
    usage = aggregate([line("a", 5, "cache"), bad, line("a", 6, "origin")])
    assert usage.malformed == 1
    assert usage.groups == {"a": Totals(requests=2, served_bytes=11, cache_bytes=5, origin_bytes=6)}


def test_plain_and_gzip_files_in_turn(tmp_path: Path) -> None:
    rotated = tmp_path / "access.log.1.gz"
    with gzip.open(rotated, "wb") as f:
        f.write(line("a", 1, "cache") + b"\n" + line("a", 2, "origin") + b"\n")
    current = tmp_path / "access.log"
    current.write_bytes(line("a", 4, "peer") + b"\n" + b'{"site": "a", "by')  # the last line still being written
    assert list(read_lines([rotated, current])) == [
        line("a", 1, "cache"),
        line("a", 2, "origin"),
        line("a", 4, "peer"),
        b'{"site": "a", "by',
    ]
    usage = aggregate(read_lines([rotated, current]))
    assert usage.malformed == 1
    assert usage.groups == {
        "a": Totals(requests=3, served_bytes=7, cache_bytes=1, origin_bytes=2, peer_bytes=4),
    }


def test_an_endless_line_is_read_in_bounded_pieces(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    with open(path, "wb") as f:
        f.write(line("a", 1, "cache") + b"\n")
        f.write(b"x" * (40 * MAX_LINE) + b"\n")  # no record is this long: another program's, or garbage
        f.write(line("a", 2, "cache") + b"\n")
    tracemalloc.start()
    try:
        usage = aggregate(read_lines([path]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX_LINE
    assert usage.malformed == 1
    assert usage.groups == {"a": Totals(requests=2, served_bytes=3, cache_bytes=3)}


def test_the_table() -> None:
    usage = aggregate([line("b", 10, "origin"), line("a", 30, "cache"), b"junk"])
    assert render(usage, "site").splitlines() == [
        "site   requests  served  cache  origin  peer  cache+origin  for_peers  prefetch  byte_hit",
        "a             1      30     30       0     0             0          0         0    1.0000",
        "b             1      10      0      10     0             0          0         0    0.0000",
        "TOTAL         2      40     30      10     0             0          0         0    0.7500",
        "malformed lines skipped: 1",
    ]


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "access.log.gz"
    with gzip.open(path, "wb") as f:
        f.write(line("a", 3, "cache") + b"\n" + line("a", 1, "origin") + b"\n")
    assert cli.main(["usage", str(path), "--by", "site", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "by": "site",
        "groups": {
            "a": {
                "requests": 2,
                "served_bytes": 4,
                "cache_bytes": 3,
                "origin_bytes": 1,
                "peer_bytes": 0,
                "mixed_bytes": 0,
                "for_peers_requests": 0,
                "for_peers_bytes": 0,
                "prefetch_requests": 0,
                "prefetch_bytes": 0,
                "byte_hit_ratio": 0.75,
            }
        },
        "total": {
            "requests": 2,
            "served_bytes": 4,
            "cache_bytes": 3,
            "origin_bytes": 1,
            "peer_bytes": 0,
            "mixed_bytes": 0,
            "for_peers_requests": 0,
            "for_peers_bytes": 0,
            "prefetch_requests": 0,
            "prefetch_bytes": 0,
            "byte_hit_ratio": 0.75,
        },
        "malformed": 0,
    }


def test_a_missing_or_corrupt_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["usage", str(tmp_path / "nope.log")]) == 1
    assert "nope.log" in capsys.readouterr().err
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(gzip.compress(line("a", 1, "cache") * 1000)[:40])
    assert cli.main(["usage", str(cut)]) == 1
    assert "cut.log.gz" in capsys.readouterr().err
