"""edgecache.simulate and `edgecache simulate`: hit ratios worked out by hand on tiny logs, every kind of line that
is not simulated, the size lists, the progress bar's bound and the SVG plot."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from edgecache import cli, simulate, simulatecmd
from edgecache.simulate import Budget, Kind, Request, classify, replay
from edgecache.usagecmd import MAX_LINE
from loadtest import tracelog

K = 4096
ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"


def line(path: object = "/x", status: object = 200, nbytes: int = K, rng: object = None, **more: Any) -> bytes:
    record = {"site": "s", "method": "GET", "host": "h.test", "path": path, "range": rng, "status": status}
    return json.dumps({**record, "bytes": nbytes, **more}).encode()


def run(lines: list[bytes], memory: int, disk: int, disk_policy: str = "fifo") -> simulate.Tiers:
    result = replay(
        lines, [Budget(memory, disk)], K, simulate.memory_policy("lru"), simulate.DISK_POLICIES[disk_policy]
    )
    (tiers,) = result.runs
    return tiers


def test_the_disk_model_is_first_stored_first_evicted_and_lru_differs_by_hand() -> None:
    # Objects of one slice each, no memory tier (its largest item is an eighth of 0), a disk of two slices.
    log = [line(p) for p in ("/a", "/b", "/a", "/c", "/a")]
    fifo = run(log, 0, 2 * K)
    # a miss, b miss, a hit, c miss (a, the first stored, goes though it was just read), a miss.
    assert (fifo.requests, fifo.hits, fifo.hit_bytes, fifo.origin_bytes) == (5, 1, K, 4 * K)
    assert (fifo.request_hit_ratio, fifo.byte_hit_ratio) == (0.2, 0.2)
    lru = run(log, 0, 2 * K, "lru")
    # With LRU the read of a keeps it: c evicts b, and the last a is a hit.
    assert (lru.hits, lru.hit_bytes, lru.origin_bytes) == (2, 2 * K, 3 * K)


def test_the_memory_tier_stands_in_front_of_the_disk() -> None:
    log = [line(p) for p in ("/a", "/b", "/c", "/a")]
    assert run(log, 0, 2 * K).hits == 0  # the disk (a, b, c: a went) alone misses the last a
    both = run(log, 8 * K, 2 * K)  # memory of 8 slices (1 slice at most each) keeps a
    assert (both.hits, both.hit_bytes, both.origin_bytes) == (1, K, 3 * K)
    # A disk hit is offered to memory: a, pushed out of memory (8 slices, LRU) by 8 others, comes back from disk.
    others = [line(f"/{n}") for n in range(8)]
    gone = run([line("/a"), *others], 8 * K, 64 * K)
    assert "s|h.test|/a#0" not in gone.memory
    back = run([line("/a"), *others, line("/a")], 8 * K, 64 * K)
    assert (back.hits, back.origin_bytes) == (1, 9 * K)
    assert "s|h.test|/a#0" in back.memory


def test_a_range_touches_the_slices_it_covers_and_counts_only_its_bytes() -> None:
    log = [
        line("/v", 206, 4901, "bytes=100-5000"),  # slices 0 (3996 bytes of it) and 1 (905): both missed
        line("/v", 206, 100, "bytes=4096-4195"),  # slice 1: a hit
        line("/v", 206, 100, "bytes=0-99"),  # slice 0: a hit
        line("/v", 206, 10, "bytes=8192-"),  # slice 2 to the end: the object ends at 8202, a slice of 10 bytes
        line("/v", 206, 10, "bytes=8192-9999"),  # the same slice, a hit
    ]
    t = run(log, 0, 64 * K)
    assert (t.requests, t.hits, t.served_bytes, t.hit_bytes) == (5, 3, 5121, 210)
    assert t.origin_bytes == 2 * K + 10  # whole slices where the end is not known, 10 where it is
    assert list(simulate.touches(Request("k", 100, 5000, None), K)) == [
        simulate.Touch("k#0", K, 3996),
        simulate.Touch("k#1", K, 905),
    ]
    assert list(simulate.touches(Request("k", 0, 4999, 5000), K))[1] == simulate.Touch("k#1", 904, 904)


def test_keys_are_the_nodes_keys() -> None:
    log = [line("/a?v=1&token=x"), line("/a?token=y&v=1", host="H.Test:8080")]
    assert run(log, 0, 64 * K).hits == 0  # every parameter keyed (no config): two objects
    result = replay(
        log, [Budget(0, 64 * K)], K, simulate.memory_policy("lru"), simulate.DISK_POLICIES["fifo"], {"s": ("v",)}
    )
    assert result.runs[0].hits == 1  # the site keys only v, and host names are normalised: one object
    assert classify(json.loads(line("/a#frag")), {}) == Request("s|h.test|/a", 0, K - 1, K)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (line(cache="pass", method="POST", nbytes=7), Kind.PASS),
        (line(cache="peer"), Kind.PEER),
        (line(method="HEAD", nbytes=0), Kind.OTHER),
        (line(status=404, nbytes=9), Kind.OTHER),
        (line(status=304, nbytes=0), Kind.OTHER),
        (line(status=206, rng="bytes=0-9,20-29"), Kind.OTHER),  # multipart: its bytes hold boundaries
        (line(status=206, rng="bytes=-500", nbytes=500), Kind.OTHER),  # a suffix: where it starts is unknown
        (line(status=206, rng=None), Kind.OTHER),
        (line(path="no-slash"), Kind.OTHER),
        (line(host="bad host"), Kind.OTHER),
        (b"not json", Kind.MALFORMED),
        (b"[1, 2]", Kind.MALFORMED),
        (b"\xff\xfe", Kind.MALFORMED),
        (line(nbytes=-1), Kind.MALFORMED),
        (line(status=True), Kind.MALFORMED),
        (line(path=None), Kind.MALFORMED),
        (line(rng=7), Kind.MALFORMED),
        (line(ua="x", referer="y", protocol="HTTP/2.0", node="n1", upstream="cache", for_peer=True), Kind.SIMULATED),
    ],
)
def test_each_kind_of_line(raw: bytes, kind: Kind) -> None:
    result = replay([raw], [Budget(0, 64 * K)], K, simulate.memory_policy("s3fifo"), simulate.DISK_POLICIES["fifo"])
    assert result.lines == {kind: 1}
    t = result.runs[0]
    # Passed bytes are served and fetched at any size; a forward to the owner is not this node's cache's traffic.
    served = {Kind.PASS: 7, Kind.SIMULATED: K}.get(kind, 0)
    assert (t.requests, t.served_bytes, t.origin_bytes) == (int(served > 0), served, served)


def write_logs(tmp_path: Path) -> list[str]:
    plain = tmp_path / "access.log"
    plain.write_bytes(b"\n".join([line("/a"), b"cut {", line("/a"), b"x" * (MAX_LINE + 10), line("/b")]) + b"\n")
    rotated = tmp_path / "access.log.1.gz"
    rotated.write_bytes(gzip.compress(line("/b") + b"\n" + line("/b", cache="pass") + b"\n"))
    return [str(rotated), str(plain)]


def test_the_command_reads_gzip_and_plain_logs_and_counts_malformed_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = write_logs(tmp_path)
    assert cli.main(["simulate", *logs, "--slice", "4KiB", "--memory", "0", "--disk", "64KiB,1MiB"]) == 0
    # b miss, b (pass), a miss, a hit, b hit: 5 requests, 2 hits, 5 slices served.
    assert capsys.readouterr().out.splitlines() == [
        "lines: 7 (4 simulated, 1 pass, 0 peer, 0 other, 2 malformed)",
        f"served: {5 * K} bytes in 5 requests; slice 4KiB",
        "memory  disk   request_hit  byte_hit  origin_bytes",
        "0       64KiB       0.4000    0.4000         12288",
        "0       1MiB        0.4000    0.4000         12288",
    ]


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = write_logs(tmp_path)
    assert cli.main(["simulate", *logs, "--slice", "4096", "--memory", "0", "--disk", "64KiB", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["lines"] == {"simulated": 4, "pass": 1, "peer": 0, "other": 0, "malformed": 2}
    assert doc["runs"] == [
        {
            "memory_bytes": 0,
            "disk_bytes": 16 * K,
            "requests": 5,
            "hits": 2,
            "served_bytes": 5 * K,
            "hit_bytes": 2 * K,
            "origin_bytes": 3 * K,
            "request_hit_ratio": 0.4,
            "byte_hit_ratio": 0.4,
        }
    ]


def test_sizes_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert simulatecmd.size_list("1GiB,256MiB,1g") == (256 * 2**20, 2**30)
    with pytest.raises(argparse.ArgumentTypeError, match="'2x' is not a size"):
        simulatecmd.size_list("1GiB,2x")
    with pytest.raises(argparse.ArgumentTypeError, match="at most 16 sizes"):
        simulatecmd.size_list(",".join(f"{n}MiB" for n in range(1, 18)))
    assert [simulatecmd.size_label(n) for n in (0, 4096, 2**30, 3 * 2**40, 1000)] == [
        "0",
        "4KiB",
        "1GiB",
        "3TiB",
        "1000",
    ]
    logs = write_logs(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["simulate", *logs, "--disk", "1GiB,lots"])
    assert exit_.value.code == 2
    assert "argument --disk: 'lots': 'lots' is not a size such as 256MiB" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["simulate", *logs, "--slice", "0"])
    assert "a slice must be between 4KiB and 64MiB, as cache.slice" in capsys.readouterr().err
    assert cli.main(["simulate", *logs, "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot writes SVG only" in capsys.readouterr().err
    assert cli.main(["simulate", str(tmp_path / "missing.log")]) == 1
    assert "missing.log: [Errno 2]" in capsys.readouterr().err
    (tmp_path / "cut.gz").write_bytes(gzip.compress(line() * 100)[:40])
    assert cli.main(["simulate", str(tmp_path / "cut.gz")]) == 1
    assert "cut.gz: " in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[cache]\nslice = 'huge'\n")
    assert cli.main(["simulate", *logs, "--config", str(tmp_path / "bad.toml")]) == 2
    assert "cache.slice" in capsys.readouterr().err


def test_the_config_gives_the_slice_budgets_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        "[cache]\nmemory = '0'\ndisk = '64KiB'\nslice = '4KiB'\n"
        "[[sites]]\nname = 's'\nhosts = ['h.test']\norigins = ['http://127.0.0.1:9']\nkey_query = ['v']\n"
    )
    log = tmp_path / "access.log"
    log.write_bytes(line("/a?v=1&t=1") + b"\n" + line("/a?v=1&t=2") + b"\n")
    assert cli.main(["simulate", str(log), "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["0", "64KiB", "0.5000", "0.5000", str(K)]


def test_progress_is_redrawn_at_most_once_a_percent() -> None:
    out = io.StringIO()
    progress = simulatecmd.Progress(out)
    progress.total = 10_000
    for _ in range(5000):
        progress.advance(2)
    progress.close()
    text = out.getvalue()
    assert text.count("\r") == 101  # 0% .. 100%, whatever the number of lines
    assert text.endswith("[########################################] 100% 5,000 lines\n")


def test_progress_counts_the_uncompressed_bytes_of_plain_and_gzip_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.log.gz").write_bytes(gzip.compress(b"\n".join(line(f"/{n}") for n in range(300)) + b"\n"))
    (tmp_path / "b.log").write_bytes(b"\n".join(line(f"/{n}") for n in range(100)) + b"\n")
    logs = [tmp_path / "a.log.gz", tmp_path / "b.log"]
    progress = simulatecmd.Progress(io.StringIO())
    assert len(list(simulatecmd.read(logs, progress))) == 400
    assert progress.done == progress.total == len(gzip.decompress(logs[0].read_bytes())) + logs[1].stat().st_size
    assert cli.main(["simulate", *map(str, logs), "--progress", "--slice", "4KiB"]) == 0
    err = capsys.readouterr().err
    assert 2 <= err.count("\r") <= 101
    assert err.endswith("] 100% 400 lines\n")


def test_the_plot_has_one_line_per_memory_size(tmp_path: Path) -> None:
    logs = [tmp_path / name for name in write_logs(tmp_path)]
    result = replay(
        simulatecmd.read(logs, None),
        [Budget(m, d) for m in (0, 8 * K, 64 * K) for d in (K, 4 * K, 16 * K)],
        K,
        simulate.memory_policy("s3fifo"),
        simulate.DISK_POLICIES["fifo"],
    )
    svg = ET.fromstring(simulatecmd.plot(result))
    lines = svg.findall(f"{SVG}polyline")
    assert [p.findtext(f"{SVG}title") for p in lines] == ["memory 0", "memory 32KiB", "memory 256KiB"]
    # Three disk sizes on a log scale: evenly spaced, left to right.
    xs = [[float(point.split(",")[0]) for point in p.attrib["points"].split()] for p in lines]
    assert all(len(x) == 3 and x[1] - x[0] == pytest.approx(x[2] - x[1]) and x[0] < x[2] for x in xs)
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert {"4KiB", "16KiB", "64KiB", "0%", "100%"} <= set(labels)


def test_the_bundled_trace_is_what_its_command_in_the_readme_writes(tmp_path: Path) -> None:
    command = "`python -m loadtest.tracelog loadtest/player-trace.log.gz --seed 1 --objects 3000 --sessions 8000`"
    assert command in (ROOT / "README.md").read_text()
    assert tracelog.write(tmp_path / "trace.log", seed=1, objects=3000, sessions=8000) == 39763
    bundled = gzip.decompress((ROOT / "loadtest" / "player-trace.log.gz").read_bytes())
    assert bundled == (tmp_path / "trace.log").read_bytes()
