"""`edgecache simulate` on a real edge's own access log: at budgets where the node evicted nothing, the replay's
request hits, byte hit ratio and origin bytes are the edge's own counters, byte for byte."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache import cli
from edgecache.config import Site
from tests.conftest import make_config, start_edge
from tests.e2e.procs import ROOT
from tests.origin import Origin
from tests.samples import sample_value

SLICE = 4096
SITE = "simulate-e2e"  # a site of its own: the process-wide counters below are this test's alone
A = bytes(range(256)) * 48 + b"a" * 100  # 12388 bytes: three whole slices and 100 bytes
B = bytes(range(251)) * 163 + b"b" * 35  # 40948 bytes: ten slices, the last 4084
C = b"c" * 5000  # two slices, the second 904 bytes
# (path, Range, status, body, served from the cache?): each request reads slices all stored or all missing, so the
# edge's per-request upstream (cache, or fetched) splits its bytes exactly as the replay splits them per slice.
REQUESTS = [
    ("/a", None, 200, A, False),  # fetched whole: the line shows where /a ends
    ("/a", None, 200, A, True),
    ("/b", "bytes=0-8191", 206, B[:8192], False),  # slices 0 and 1
    ("/b", "bytes=0-8191", 206, B[:8192], True),
    ("/b", "bytes=100-4000", 206, B[100:4001], True),
    ("/b", "bytes=36864-", 206, B[36864:], False),  # slice 9, to the end: 4084 bytes
    ("/b", "bytes=36900-", 206, B[36900:], True),
    ("/c", "bytes=0-99", 206, C[:100], False),  # slice 0, a whole one
    ("/c", "bytes=4096-9999", 206, C[4096:], False),  # cut short at the end: slice 1 holds 904 bytes
]


def sample(name: str, **labels: str) -> float:
    return sample_value(name, labels) or 0.0


async def test_replay_of_the_edges_log_matches_its_counters(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path, data in (("/a", A), ("/b", B), ("/c", C)):
        origin.put(path, data)
    config = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE)
    site = Site(name=SITE, hosts=("video.test",), origins=(origin.url,))
    config = replace(config, sites=(site,), access_log=tmp_path / "access.log")
    async with start_edge(config) as edge:
        for path, rng, status, body, _ in REQUESTS:
            got = await edge.get(path, **({"Range": rng} if rng else {}))
            assert (got[0], got[2]) == (status, body), (path, rng)
    log = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    # A request for a stored object whose slices it reads are missing is "cache+origin", all of its bytes fetched.
    ways = ["origin", "cache", "origin", "cache", "cache", "cache+origin", "cache", "origin", "cache+origin"]
    assert [line["upstream"] for line in log] == ways
    served = "edgecache_site_served_bytes_total"
    cache_bytes = sample(served, site=SITE, upstream="cache")
    fetched_bytes = sample(served, site=SITE, upstream="origin") + sample(served, site=SITE, upstream="cache+origin")
    assert cache_bytes + fetched_bytes == sum(len(r[3]) for r in REQUESTS) == 54197
    assert cache_bytes == sum(len(r[3]) for r in REQUESTS if r[4]) == 28529
    fetched = sample("edgecache_origin_bytes_total", site=SITE)
    assert fetched == len(A) + 2 * SLICE + 4084 + SLICE + 904 == 29664  # whole slices, as the node stores them
    hits = sum(r[4] for r in REQUESTS)

    args = ["simulate", str(tmp_path / "access.log"), "--memory", "64MiB", "--disk", "1GiB", "--slice", "4KiB"]
    assert cli.main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["lines"] == {"simulated": 9, "pass": 0, "peer": 0, "other": 0, "malformed": 0}
    (run,) = doc["runs"]
    assert (run["requests"], run["hits"]) == (len(REQUESTS), hits)
    assert (run["served_bytes"], run["hit_bytes"], run["origin_bytes"]) == (54197, cache_bytes, fetched)
    assert run["byte_hit_ratio"] == round(cache_bytes / (cache_bytes + fetched_bytes), 6) == 0.526394


def test_the_command_reads_gzip_and_plots(tmp_path: Path) -> None:
    """The installed command, as an operator runs it: two logs (one gzip-rotated), a table and an SVG plot."""
    lines = [
        {"site": "s", "method": "GET", "host": "h.test", "path": "/x", "range": None, "status": 200, "bytes": 5000},
        {"site": "s", "method": "GET", "host": "h.test", "path": "/x", "range": None, "status": 200, "bytes": 5000},
    ]
    (tmp_path / "old.log.gz").write_bytes(gzip.compress((json.dumps(lines[0]) + "\n").encode()))
    (tmp_path / "new.log").write_text(json.dumps(lines[1]) + "\nnot a record\n")
    plot = tmp_path / "plot.svg"
    cmd = [sys.executable, "-m", "edgecache", "simulate", str(tmp_path / "old.log.gz"), str(tmp_path / "new.log")]
    cmd += ["--slice", "4KiB"]
    cmd += ["--memory", "0,64KiB", "--disk", "64KiB,1MiB", "--plot", str(plot)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "lines: 3 (2 simulated, 0 pass, 0 peer, 0 other, 1 malformed)",
        "served: 10000 bytes in 2 requests; slice 4KiB",
        "memory  disk   request_hit  byte_hit  origin_bytes",
        "0       64KiB       0.5000    0.5000          5000",
        "0       1MiB        0.5000    0.5000          5000",
        "64KiB   64KiB       0.5000    0.5000          5000",
        "64KiB   1MiB        0.5000    0.5000          5000",
    ]
    svg = ET.parse(plot).getroot()
    lines_drawn = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert [p.findtext("{http://www.w3.org/2000/svg}title") for p in lines_drawn] == ["memory 0", "memory 64KiB"]
    assert [len(p.attrib["points"].split()) for p in lines_drawn] == [2, 2]


def test_a_line_of_absurd_bytes_and_a_slice_of_one_byte_never_hang_the_command(tmp_path: Path) -> None:
    """A line that says it served 10**30 bytes had its 10**24 slices listed and replayed: the command never ended
    (nor did a 1 GiB line with --slice 1). Such a line is malformed, and such a slice refused."""
    good = {"site": "s", "method": "GET", "host": "h.test", "path": "/x", "range": None, "status": 200}
    log = tmp_path / "access.log"
    log.write_text(json.dumps({**good, "bytes": 10**30}) + "\n" + json.dumps({**good, "bytes": 5000}) + "\n")
    cmd = [sys.executable, "-m", "edgecache", "simulate", str(log), "--memory", "0", "--disk", "64KiB"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[0] == "lines: 2 (1 simulated, 0 pass, 0 peer, 0 other, 1 malformed)"
    log.write_text(json.dumps({**good, "bytes": 2**30}) + "\n")
    done = subprocess.run([*cmd, "--slice", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "argument --slice: a slice must be between 4KiB and 64MiB, as cache.slice" in done.stderr
    assert "Traceback" not in done.stderr
