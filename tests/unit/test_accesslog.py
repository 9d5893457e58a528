"""The access log writer: lines in order, rotation followed (move, and SIGUSR1-style reopen), any bytes
encoded, a bounded queue, and a writer that outlives a failing write."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from edgecache import metrics
from edgecache.accesslog import AccessLog
from edgecache.core.status import CacheStatus
from edgecache.proxy import observe
from tests.samples import sample_value


def test_lines_rotation_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.log"
    log = AccessLog(path)
    for i in range(100):
        log.write({"i": i})
    log.close()
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == list(range(100))
    log = AccessLog(path)
    path.rename(tmp_path / "access.log.1")  # logrotate moved it away
    log.reopen()
    log.write({"i": "after"})
    log.close()
    assert path.read_text().splitlines() == ['{"i":"after"}']
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 100


def test_a_log_whose_directory_cannot_be_made_loses_its_lines_not_the_worker(tmp_path: Path) -> None:
    """The directory was made in the constructor, unguarded: a path under a file (or a mount gone since the node
    started) raised in the worker's start, which died, was started again and died again, and never served."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file\n")
    before = _dropped()
    log = AccessLog(blocker / "logs" / "access.log")
    log.write({"i": 1})
    log.close()
    assert _dropped() - before == 1
    assert blocker.read_text() == "a file\n"


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    log = AccessLog(None)
    log.write({"i": 1})
    log.reopen()
    log.close()
    assert list(tmp_path.iterdir()) == []


def _dropped() -> float:
    return sample_value("edgecache_access_log_dropped_total") or 0.0


def test_any_bytes_give_one_parseable_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path)
    odd = 'bytes=\udcff-\udc80\u2028\n"é'  # a client's non-UTF-8 bytes, as aiohttp's surrogateescape decodes them
    log.write({"range": odd})
    log.write({"range": b"\xff\x00ok"})
    log.write({"i": "after"})
    log.close()
    raw = path.read_bytes()
    assert raw.isascii()
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line) for line in lines[:-1]] == [
        {"range": odd},
        {"range": "\udcff\x00ok"},
        {"i": "after"},
    ]


def test_queue_is_bounded_while_the_writer_is_blocked(tmp_path: Path) -> None:
    """A writer that cannot write (here: a FIFO nobody reads yet) holds at most max_queued lines; the rest are
    dropped and counted, and memory stays flat however many more come."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    log = AccessLog(fifo, max_queued=100)  # the writer blocks opening the FIFO, before taking any line
    before = _dropped()
    for i in range(150):
        log.write({"i": i})
    assert _dropped() - before == 50
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(150, 50_150):
            log.write({"i": i, "path": "/x" * 50})
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024
    assert _dropped() - before == 50_050
    with open(fifo, "rb") as reader:  # the writer's open completes: it drains the queue, then stops on close()
        log.close()
        lines = reader.read().splitlines()
    assert [json.loads(line)["i"] for line in lines] == list(range(100))


def test_a_failing_write_loses_its_lines_not_the_writer(caplog: pytest.LogCaptureFixture) -> None:
    log = AccessLog(Path("/dev/full"))  # every write fails: no space left on the device
    before = _dropped()
    for i in range(3):
        log.write({"i": i})
    log.close()
    assert _dropped() - before == 3  # each line was taken, failed and counted: the writer went on to the end
    # Said once, not once a batch: a full disk under a busy log must not fill the error log too.
    assert len([r for r in caplog.records if "not written" in r.getMessage()]) == 1


def test_a_hostile_user_agent_and_referer_are_cut_and_escaped(tmp_path: Path) -> None:
    """The fields a client writes freely: at most MAX_FIELD characters each, in one ASCII JSON line."""
    path = tmp_path / "access.log"
    log = AccessLog(path)
    ua = '"},{"forged":1}\n\\' + "\udcff" * 600  # a quote, a newline, and bytes that are not UTF-8 (surrogates)
    referer = "\u2028" + "é" * 1000
    t = observe.new_trace()
    t.site, t.status = "videos", CacheStatus.HIT
    line = observe.Line("127.0.0.1", "GET", "video.test", "/x", None, ua, referer, "HTTP/1.1")
    observe.log_line(log, t, line, 200, 10, "node1", "cache")
    log.close()
    raw = path.read_bytes()
    assert raw.isascii()
    assert raw.count(b"\n") == 1
    assert len(raw) < 2 * 6 * observe.MAX_FIELD + 1024  # a character is at most 6 bytes escaped (\udcff)
    record = json.loads(raw)
    assert record["user_agent"] == ua[: observe.MAX_FIELD]
    assert record["referer"] == referer[: observe.MAX_FIELD]
    assert (record["site"], record["node"], record["upstream"], record["protocol"], record["for_peer"]) == (
        "videos",
        "node1",
        "cache",
        "HTTP/1.1",
        False,
    )


def test_absent_fields_are_null() -> None:
    assert observe.clip(None) is None
    assert observe.protocol((1, 0)) == "HTTP/1.0"


@pytest.mark.parametrize(
    ("status", "origin_bytes", "expected"),
    [
        (CacheStatus.HIT, 0, "cache"),
        (CacheStatus.STALE, 0, "cache"),
        (CacheStatus.REVALIDATED, 0, "cache"),
        (CacheStatus.HIT, 5, "cache+origin"),  # a stored entry, some of its slices fetched meanwhile
        (CacheStatus.STALE, 5, "cache+origin"),
        (CacheStatus.MISS, 0, "origin"),  # its reader may take its fill's slices from memory: still the origin's
        (CacheStatus.EXPIRED, 5, "origin"),
        (CacheStatus.PASS, 0, "origin"),
        (CacheStatus.PEER, 0, "peer"),
        (CacheStatus.ERROR, 0, "-"),
        (CacheStatus.PARTIAL, 0, "cache+origin"),
    ],
)
def test_upstream_names_where_an_answer_came_from(status: CacheStatus, origin_bytes: int, expected: str) -> None:
    assert observe.upstream(status, metrics.Sources(origin=origin_bytes)) == expected


def test_every_cache_status_has_an_upstream() -> None:
    ways = {observe.upstream(s, metrics.Sources()) for s in CacheStatus}
    assert ways == {"cache", "origin", "peer", "cache+origin", "-"}


def test_the_served_bytes_counter_tallies_the_current_request_only() -> None:
    sources = metrics.Sources()
    before = sample_value("edgecache_served_bytes_total", {"source": "disk"}) or 0.0
    token = metrics.SOURCES.set(sources)
    try:
        metrics.BYTES_SERVED.labels("memory").inc(3)
        metrics.BYTES_SERVED.labels("disk").inc(4)
        metrics.BYTES_SERVED.labels("origin").inc(5)
        metrics.BYTES_SERVED.labels("peer").inc(6)
    finally:
        metrics.SOURCES.reset(token)
    metrics.BYTES_SERVED.labels("origin").inc(100)  # no request: the metric only
    assert sources == metrics.Sources(cache=7, origin=5, peer=6)
    assert (sample_value("edgecache_served_bytes_total", {"source": "disk"}) or 0.0) - before == 4


def test_a_log_to_stdout_is_written_through_the_process_own_descriptor(tmp_path: Path) -> None:
    """`log.access = "/dev/stdout"` (the Kubernetes manifest's) opened /dev/stdout by path, which fails where
    standard output is a socket (systemd's StandardOutput=journal: ENXIO) or a pipe a container runtime made as root
    and the pod's runAsUser opens again (EACCES): the node refused to start. Here it is a socket."""
    code = (
        "from pathlib import Path\n"
        "from edgecache.accesslog import AccessLog, check_writable\n"
        "check_writable(Path('/dev/stdout'))\n"
        "log = AccessLog(Path('/dev/stdout'))\n"
        "log.write({'i': 1})\n"
        "log.reopen()\n"
        "log.write({'i': 2})\n"
        "log.close()\n"
    )
    ours, theirs = socket.socketpair()
    with ours, theirs:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        r = subprocess.run(
            [sys.executable, "-c", code], stdout=theirs, stderr=subprocess.PIPE, timeout=60, cwd=tmp_path, env=env
        )
        theirs.close()
        got = b""
        while chunk := ours.recv(65536):
            got += chunk
    assert (r.returncode, got) == (0, b'{"i":1}\n{"i":2}\n'), r.stderr
