"""The fast path answers fresh hits byte for byte as aiohttp does, hands everything else over, and bounds heads.

Two edges on their own caches (one with the fast path, one with aiohttp alone) are warmed the same way, then
asked the same raw requests; their raw answers must be identical apart from the per-response Age, Date and
multipart boundary. The fast edge's own counter shows which of them it answered itself.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgecache.core.freshness import current_age
from edgecache.core.memo import Memo
from edgecache.proxy import decide, rangecut
from edgecache.proxy.fastserver import PROMOTE_SECONDS
from edgecache.proxy.hit import Hit
from edgecache.proxy.lookup import Load
from edgecache.storage.store import slice_name
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import exchange, own_error

SMALL = bytes(range(256)) * 40  # 10 KiB
BIG = bytes((i * 7 + i // 251) % 256 for i in range(3 * 2**20 + 12345))  # 4 slices of 1 MiB


def answered() -> float:
    return sample_value("edgecache_fast_path_total", {"outcome": "answered"}) or 0.0


async def normalised(raw: bytes) -> bytes:
    def sub(raw: bytes) -> bytes:
        raw = re.sub(rb"\r\n(Age|Date): [^\r]*", rb"\r\n\1: -", raw)
        return re.sub(rb"[0-9a-f]{24}", b"BOUNDARY", raw)

    return await asyncio.to_thread(sub, raw)  # megabytes of answers: off the loop (tests/e2e/conftest.py)


def get(path: str, *fields: str, method: str = "GET", host: str = "video.test") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def get10(path: str, *fields: str, method: str = "GET", host: str = "video.test") -> bytes:
    """An HTTP/1.0 request that asks for keep-alive (core.keepalive), so a request can follow it."""
    return to10(get(path, *fields, method=method, host=host))


def to10(request: bytes) -> bytes:
    line, rest = request.split(b" HTTP/1.1\r\n", 1)
    return line + b" HTTP/1.0\r\nConnection: keep-alive\r\n" + rest


CLOSE = get("/small", "Connection: close")

# (request, answers the fast path gives: the case's and the closing request's; 1 where it refuses the case's head
# as aiohttp's parser does, and closes; 0 where aiohttp answers)
CASES: list[tuple[bytes, int]] = [
    (get("/small"), 2),
    (get("/small", method="HEAD"), 2),
    (get("/big"), 2),
    (get("/big", "Range: bytes=0-99"), 2),
    (get("/big", "Range: bytes=1048570-1048585"), 2),  # across a slice boundary
    (get("/big", "Range: bytes=-500"), 2),
    (get("/big", "Range: bytes=3000000-"), 2),
    (get("/big", 'If-None-Match: "v1"'), 2),
    (get("/big", "If-Modified-Since: Sun, 02 Nov 2025 00:00:00 GMT"), 2),
    (get("/big", "Range: bytes=5-9", 'If-Range: "other"'), 2),  # If-Range fails: the whole object
    (get("/big", "Accept-Encoding: gzip", "User-Agent: player/1.0", "Connection: keep-alive"), 2),
    (get("/big", "Range: bytes=0-1,5-6"), 2),  # multipart (proxy.multipart)
    (get("/big", "Range: bytes=0-1,5-6", method="HEAD"), 2),
    (get("/big", "Range: bytes=1048570-1048585,2000000-2000009,-10"), 2),  # across slices, and a suffix
    (get("/small", "Range: bytes=0-0,2-3"), 2),  # each part with the object's Content-Type
    (get("/big", "Range: bytes=0-1,5-6", 'If-Range: "other"'), 2),  # If-Range fails: the whole object
    (get("/big", "Range: bytes=9999999-"), 2),  # 416
    (get("/big", 'If-Match: "nope"'), 2),  # 412
    (get("/big", "Range: bytes=9999999-", method="HEAD"), 2),  # 416, no body
    (get("/big", 'If-Match: "nope"', method="HEAD"), 2),  # 412, no body
    (get("/big", "Cache-Control: no-cache"), 2),  # revalidated first (proxy.coldmiss), then answered
    (get("/small", host="nowhere.test"), 2),  # 421: refused here (core.admit), as aiohttp refuses it
    (get("/small", method="HEAD", host="nowhere.test"), 2),  # 421, no body
    (get("/small", host=""), 2),  # 400: no Host
    (get("/sm%00all"), 2),  # 400: an encoded NUL
    (get("/small", "Cache-Control: only-if-cached"), 2),  # a hit all the same
    (get("/missing", "Cache-Control: only-if-cached"), 2),  # 504: not stored, and may not be fetched
    (get("/missing", "Cache-Control: only-if-cached", method="HEAD"), 2),
    (get("/missing"), 2),  # a miss: the origin's 404, stored (RFC 9110 15.5.5), then a hit
    (get("http://video.test/small"), 2),  # absolute form (RFC 9112 3.2.2): a proxy client's
    (get("http://VIDEO.test:80/big?", "Range: bytes=0-99", host="other.test"), 2),  # its authority wins over Host
    (get("https://video.test/big", "Range: bytes=0-1,5-6", method="HEAD"), 2),
    (get("http://nowhere.test/small"), 2),  # 421
    (get("ftp://video.test/small"), 2),  # 400: not http
    (get("http://user@video.test/small"), 2),  # 400: not a plain host[:port]
    (b"GET /small HTTP/1.1\r\n\r\n", 1),  # 400: no Host, which aiohttp's parser refuses in HTTP/1.1
    (b"GET /small HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 2),  # 400: no Host (HTTP/1.0 may omit it)
    (get10("http://video.test/small"), 2),
    (get10("/small"), 2),  # HTTP/1.0: its status line, and Connection: keep-alive
    (get10("/small", method="HEAD"), 2),
    (get10("/big", "Range: bytes=1048570-1048585"), 2),
    (get10("/big", "Range: bytes=0-1,5-6"), 2),
    (get10("/big", "Range: bytes=9999999-"), 2),  # 416
    (get10("/big", 'If-None-Match: "v1"'), 2),  # 304
    (get10("/small", host="nowhere.test"), 2),  # 421
    (get10("/missing"), 2),  # the stored 404
    (get10("/gone", method="HEAD"), 2),
    (b"GET /small HTTP/1.1\nHost: video.test\n\n", 1),  # bare LF
    (b"GET /small HTTP/1.1\r\nHost: video.test\r\nHost: other.test\r\n\r\n", 1),  # a field that must be single
    (b"GET /small HTTP/1.1\r\nHost: video.test\r\nContent-Length: 5\r\n\r\nhello", 0),
    (get("/sm%61ll"), 2),  # the same key, normalised
    (get("/gone"), 2),  # a stored 404
    (get("/gone", method="HEAD"), 2),
    (get("/gone", "Range: bytes=0-3"), 2),  # never ranged: the whole 404
    (get("/moved"), 2),  # a stored 301, its Location and body
    (get("/moved", 'If-None-Match: "m1"'), 2),  # 304
]


@pytest.fixture
async def pair(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Edge, Edge]]:
    origin.put("/small", SMALL, content_type="text/plain")
    origin.put("/big", BIG)
    origin.put("/gone", b"no such video\n", status=404, content_type="text/plain")
    moved = {"Cache-Control": "public, max-age=3600", "Location": "/big"}
    origin.put("/moved", b"see /big\n", status=301, etag='"m1"', headers=moved)
    memory, send = request.param
    async with AsyncExitStack() as stack:
        edges = []
        for name, fast in (("fast", True), ("framework", False)):
            config = make_config(tmp_path / name, [origin.url], memory_bytes=memory)
            config = replace(config, fast_path=fast, disk_send=send)
            edge = await stack.enter_async_context(start_edge(config))
            for path in ("/small", "/big"):
                assert (await edge.get(path))[0] == 200
            for path, line in (("/gone", b"HTTP/1.1 404 "), ("/moved", b"HTTP/1.1 301 ")):  # not followed
                assert (await exchange(edge.port, get(path, "Connection: close"))).startswith(line)
            await edge.node.engine.flush()
            edges.append(edge)
        yield edges[0], edges[1]


@pytest.mark.parametrize(
    "pair",
    [(64 * 2**20, "pread"), (0, "pread"), (0, "sendfile")],
    ids=["memory-hits", "disk-hits-pread", "disk-hits-sendfile"],
    indirect=True,
)
@pytest.mark.parametrize(("case", "fast"), CASES, ids=[str(i) for i in range(len(CASES))])
async def test_fast_path_answers_exactly_as_aiohttp_does(pair: tuple[Edge, Edge], case: bytes, fast: int) -> None:
    fast_edge, framework = pair
    before = answered()
    ours = await exchange(fast_edge.port, case + CLOSE)
    during = answered() - before
    theirs = await exchange(framework.port, case + CLOSE)
    assert await normalised(ours) == await normalised(theirs)
    assert ours.startswith(b"HTTP/1.")
    # The closing request is a hit too: it is answered on the fast path unless the connection was handed over.
    assert during == fast


@pytest.mark.parametrize("pair", [(64 * 2**20, "pread")], indirect=True)
async def test_fast_path_bodies_are_the_origins_bytes(pair: tuple[Edge, Edge], origin: Origin) -> None:
    fast_edge, _ = pair
    hits = dict(origin.hits)
    raw = await exchange(fast_edge.port, get("/big", "Range: bytes=1048000-2098000") + CLOSE)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 Partial Content\r\n")
    assert f"\r\nContent-Range: bytes 1048000-2098000/{len(BIG)}\r\n".encode() in head
    assert b"\r\nCache-Status: edgecache; hit\r\n" in head
    assert rest[: 2098000 - 1048000 + 1] == BIG[1048000:2098001]
    assert dict(origin.hits) == hits


@pytest.mark.parametrize("pair", [(64 * 2**20, "pread")], indirect=True)
async def test_pipelined_hits_then_a_miss_keep_their_order(pair: tuple[Edge, Edge], origin: Origin) -> None:
    fast_edge, _ = pair
    origin.put("/later", b"fetched after the hits")
    reqs = get("/small", "Range: bytes=0-3") + get("/later") + get("/small", "Range: bytes=4-7") + CLOSE
    raw = await exchange(fast_edge.port, reqs)
    bodies = [part.split(b"\r\n\r\n", 1)[1][:4] for part in raw.split(b"HTTP/1.1 ")[1:]]
    assert bodies[:3] == [SMALL[0:4], b"fetc", SMALL[4:8]]
    assert origin.hits["/later"] == 1


async def test_a_head_not_finished_in_time_gets_408(origin: Origin, tmp_path: Path) -> None:
    origin.put("/small", SMALL)
    config = replace(make_config(tmp_path / "c", [origin.url]), header_timeout=0.3, idle_timeout=30)
    async with start_edge(config) as edge:
        for warm in (False, True):  # a first head, and a head after a kept-alive answer: the same deadline
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            if warm:
                writer.write(get("/small"))
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                await reader.readexactly(len(SMALL))
            writer.write(b"GET /small HTTP/1.1\r\nHost: vid")  # and nothing more: slowloris
            async with asyncio.timeout(5):
                answer = await reader.read(-1)
                assert answer == own_error(answer, 408, "request head not received in time")
            writer.close()
    assert origin.hits["/small"] == 1


async def test_an_idle_connection_is_closed(origin: Origin, tmp_path: Path) -> None:
    config = replace(make_config(tmp_path / "c", [origin.url]), header_timeout=30, idle_timeout=0.3)
    async with start_edge(config) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        async with asyncio.timeout(5):  # closed without a word
            assert await reader.read(-1) == b""
        writer.close()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "framework"])
async def test_a_new_connection_that_sends_nothing_is_closed_after_header_timeout(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """It waited idle_timeout (75 s by default), holding a descriptor and one of max_connections: an attacker's
    silent connections shed real viewers for that long. Its first head is awaited header_timeout, as one begun is;
    between a kept-alive connection's requests idle_timeout still holds (test_an_idle_connection_is_closed)."""
    origin.put("/small", SMALL)
    config = replace(
        make_config(tmp_path / "c", [origin.url]), header_timeout=0.3, idle_timeout=600, fast_path=fast_path
    )
    async with start_edge(config) as edge:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            async with asyncio.timeout(5):  # closed without a word, long before idle_timeout
                assert await reader.read(-1) == b""
            writer.close()
        status, _, body = await edge.get("/small")  # and the node serves on
        assert (status, body) == (200, SMALL)


def counted_cuts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first byte of every range cut from a whole answer from now on (rangecut.Cutter.head), in order."""
    cut = rangecut.Cutter.head
    cuts: list[int] = []

    def counting(self: rangecut.Cutter, content_range: str, length: int) -> bytes:
        cuts.append(int(content_range.split(" ")[1].split("-")[0]))  # "bytes FIRST-LAST/LENGTH"
        return cut(self, content_range, length)

    monkeypatch.setattr(rangecut.Cutter, "head", counting)
    return cuts


# One connection, many single ranges of one object: after the first, each is cut from the whole-object answer
# (fastpath._ranged). (request, answered by the fast path)
RANGED: list[tuple[bytes, bool]] = [
    (get("/big", "Range: bytes=0-99"), True),
    (get("/big", "Range: bytes=1048570-1048585"), True),
    (get("/big", "range: bytes=5-"), True),
    (get("/big", "Range:  bytes=-700 "), True),
    (get("/big", "Range: bytes=3000000-99999999"), True),  # the end is clamped to the length
    (get("/big", "Accept: */*", "Range: bytes=7-8", "User-Agent: p/1"), True),  # Range between other fields
    (get("/big", "Range: bytes=10-20", "Range: bytes=30-40"), True),  # the first Range counts (full parse)
    (get("/big", "Range: bytes=5-9", 'If-Range: "other"'), True),  # If-Range fails: the whole object
    (get("/big", "Range: bytes=0-1,5-6"), True),  # multipart (proxy.multipart): not cut
    (get("/big", "Range: bytes=50-59"), True),  # cut again
]


@pytest.mark.parametrize(
    "pair",
    [(64 * 2**20, "pread"), (0, "pread"), (0, "sendfile")],
    ids=["memory-hits", "disk-hits-pread", "disk-hits-sendfile"],  # pread: its buffers are reused between hits
    indirect=True,
)
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_ranges_cut_from_the_whole_answer_match_aiohttp(
    pair: tuple[Edge, Edge], monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    fast_edge, framework = pair
    cuts = counted_cuts(monkeypatch)
    asked = [case if version == "HTTP/1.1" else to10(case) for case, _ in RANGED]
    requests = b"".join(asked) + CLOSE
    before = answered()
    ours = await exchange(fast_edge.port, requests)
    during = answered() - before
    theirs = await exchange(framework.port, requests)
    assert await normalised(ours) == await normalised(theirs)
    assert ours.count(f"{version} 206 Partial Content\r\n".encode()) == 9
    assert during == sum(fast for _, fast in RANGED) + 1  # and the closing request
    assert cuts == [0, 1048570, 5, len(BIG) - 700, 3000000, 7, 50]  # none of the others


@pytest.mark.parametrize("pair", [(64 * 2**20, "pread"), (0, "pread")], ids=["memory-hits", "disk-hits"], indirect=True)
async def test_a_range_asked_again_is_answered_from_its_cut(
    pair: tuple[Edge, Edge], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single range asked again with the same fields (a segment of a byte-range playlist) is looked up from its
    third time, not cut again (Decider.cuts, valid as the memo's answers are: Hit.still; a range is remembered from
    its second time: Decider.seen): the same bytes as aiohttp's, each time; and the cuts kept are bounded
    (core.memo: two generations of 3 here)."""
    fast_edge, framework = pair
    assert fast_edge.fast is not None
    cuts = counted_cuts(monkeypatch)
    monkeypatch.setattr(fast_edge.fast.decider, "cuts", Memo(3))
    again = get("/big", "Range: bytes=1048570-1048585") * 3
    others = b"".join(get("/big", f"Range: bytes={n}-{n + 9}") * 2 for n in range(10, 80, 10))  # 7 more, twice
    requests = again + others + again + CLOSE
    before = answered()
    ours = await exchange(fast_edge.port, requests)
    assert answered() - before == 3 + 14 + 3 + 1
    assert await normalised(ours) == await normalised(await exchange(framework.port, requests))
    assert ours.count(b"HTTP/1.1 206 Partial Content\r\n") == 20
    # The first range cut twice, and again once the 7 others were kept since
    assert cuts == [1048570, 1048570, *(n for n in range(10, 80, 10) for _ in range(2)), 1048570]
    assert len(fast_edge.fast.decider.cuts) <= 6


async def test_a_whole_answer_kept_for_ranges_is_never_sent_whole(origin: Origin, tmp_path: Path) -> None:
    # 11 slices: more than the fast path holds before a head (heldslices.HELD). Made in C in a few ms: built by a
    # Python thread, it held the GIL against the loop's thread at every socket call of the edge (a convoy: 0.5 s
    # late ticks in a full run).
    huge = random.Random(11).randbytes(10 * 2**20 + 3)
    origin.put("/huge", huge)
    config = replace(make_config(tmp_path / "c", [origin.url], memory_bytes=64 * 2**20), fast_path=True)
    async with start_edge(config) as edge:
        assert (await edge.get("/huge"))[2] == huge
        before = answered()
        raw = await exchange(edge.port, get("/huge", "Range: bytes=9437180-9437189") + get("/huge") + CLOSE)
        assert answered() - before == 3  # the range, the whole object streamed, and /small's 404 (not put)
        first, _, rest = raw.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 206 Partial Content\r\n")
        assert f"\r\nContent-Range: bytes 9437180-9437189/{len(huge)}\r\n".encode() in first
        assert rest[:10] == huge[9437180:9437190]
        second, _, body = rest[10:].partition(b"\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 200 OK\r\n")
        assert body[: len(huge)] == huge
        assert body[len(huge) :].startswith(b"HTTP/1.1 404 Not Found\r\n")  # the closing request (/small: none)


async def test_a_whole_slice_served_from_disk_is_offered_to_the_memory_tier(origin: Origin, tmp_path: Path) -> None:
    origin.put("/big", BIG)
    config = replace(make_config(tmp_path / "c", [origin.url], memory_bytes=16 * 2**20), fast_path=True)
    async with start_edge(config) as edge:
        assert (await edge.get("/big"))[2] == BIG
        await edge.node.engine.flush()
        store = edge.node.engine.store
        store.memory.clear()  # as if a scan had pushed it out
        hits = dict(origin.hits)
        before = answered()
        # One disk hit is offered per PROMOTE_SECONDS: the warm-up's own answer may have taken the last turn (a run
        # failed on it). A limit of time, so only time opens the next turn.
        await asyncio.sleep(PROMOTE_SECONDS)
        raw = await exchange(edge.port, get("/big", "Range: bytes=1048576-2097151") + CLOSE)
        assert answered() - before == 2  # the range, and the closing request's miss (the origin's 404)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 206 Partial Content\r\n")
        assert body[: 2**20] == BIG[2**20 : 2**21]
        assert origin.hits["/big"] == hits["/big"]
        key, meta = next((k, m) for k, m in store._meta.items() if m.length == len(BIG))
        assert store.memory.get(slice_name(key, meta.slice_version, 1)) == BIG[2**20 : 2**21]
        assert store.memory.get(slice_name(key, meta.slice_version, 0)) is None


def age(raw: bytes) -> list[bytes]:
    return re.findall(rb"\r\nAge: ([^\r]*)\r\n", raw)


def expected_ages(edge: Edge, now: float) -> list[bytes]:
    """The Age lines of /small, /big and /small again at `now`, from the edge's own stored fill times."""
    metas = {m.length: m for m in edge.node.engine.store._meta.values()}
    small, big = metas[len(SMALL)], metas[len(BIG)]
    ages = [str(int(current_age(m.headers, m.request_time, m.response_time, now))).encode() for m in (small, big)]
    return [ages[0], ages[1], ages[0]]


@pytest.mark.parametrize("pair", [(64 * 2**20, "pread")], indirect=True)
async def test_a_range_cut_once_the_whole_answers_age_ticked_has_the_new_age(
    pair: tuple[Edge, Edge], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new range is cut from the whole answer as it stands now: once that answer's Age has ticked, the cut's head
    has the new Age, as aiohttp's has (what the cuts of a whole answer share, rangecut.Cutter, is made again from
    its head once its Age ticked, never reused)."""
    fast_edge, framework = pair
    await exchange(fast_edge.port, get("/big", "Range: bytes=10-19") + CLOSE)  # the whole answer, and its Cutter
    frozen = time.time() + 7.25
    monkeypatch.setattr(time, "time", lambda: frozen)
    cuts = counted_cuts(monkeypatch)
    requests = get("/big", "Range: bytes=20-29") + get("/big", "Range: bytes=1048570-1048585") + CLOSE
    ours = await exchange(fast_edge.port, requests)
    theirs = await exchange(framework.port, requests)
    assert cuts == [20, 1048570]
    small, big, _ = expected_ages(fast_edge, frozen)
    assert age(ours) == [big, big, small]
    assert int(big) >= 7
    small, big, _ = expected_ages(framework, frozen)
    assert age(theirs) == [big, big, small]
    assert await normalised(ours) == await normalised(theirs)
    assert ours.count(b"HTTP/1.1 206 Partial Content\r\n") == 2


@pytest.mark.parametrize("pair", [(64 * 2**20, "pread")], indirect=True)
async def test_a_remembered_answer_gets_its_new_age_without_a_new_decision(
    pair: tuple[Edge, Edge], origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Age ticks every second: the remembered answer (and the whole one ranges are cut from) is brought up to
    date without parsing the head or looking it up again, gives the Age aiohttp gives, and is given up once
    the object is stale."""
    fast_edge, framework = pair
    requests = get("/small") + get("/big", "Range: bytes=10-19") + CLOSE
    await exchange(fast_edge.port, requests)  # remembered at the current second
    lookups: list[str] = []
    find_hit = decide.find_hit

    def counting(*args: Any, **kwargs: Any) -> Hit | Load | None:
        lookups.append(args[3])
        return find_hit(*args, **kwargs)

    monkeypatch.setattr(decide, "find_hit", counting)
    frozen = time.time() + 7.25
    monkeypatch.setattr(time, "time", lambda: frozen)
    before = answered()
    ours = await exchange(fast_edge.port, requests)
    theirs = await exchange(framework.port, requests)
    assert answered() - before == 3
    assert lookups == []  # renewed, not decided again
    # Each edge filled at its own moment, so a second boundary may fall between them: each Age is checked
    # against the edge's own stored times, the rule both paths must follow.
    assert age(ours) == expected_ages(fast_edge, frozen)
    assert age(theirs) == expected_ages(framework, frozen)
    assert int(age(ours)[0]) >= 7
    assert await normalised(ours) == await normalised(theirs)

    hits = origin.hits["/small"]
    frozen += 3600  # max-age=3600: stale, so it is decided again and revalidated (proxy.coldmiss)
    before = answered()
    raw = await exchange(fast_edge.port, get("/small") + CLOSE)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nCache-Status: edgecache; fwd=stale; fwd-status=304\r\n" in raw
    assert raw.endswith(SMALL)
    assert origin.hits["/small"] == hits + 1
    # Found stale, then fresh once the origin's 304 came; the second request (another head: Connection: close)
    # is a hit of the entry the 304 refreshed.
    assert lookups == ["/small"] * 3
    assert raw.count(b"\r\nCache-Status: edgecache; hit\r\n") == 1
    assert answered() - before == 2


@pytest.mark.parametrize("pair", [(64 * 2**20, "pread"), (0, "pread")], ids=["memory", "disk"], indirect=True)
async def test_a_remembered_answer_is_sent_with_each_seconds_age_as_it_is_remembered(
    pair: tuple[Edge, Edge], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer remembered at second N and asked at N+1, then N+2, is sent with exactly the Age of each second, as
    aiohttp's is, by the very answers remembered at N (its Age written as it is sent, prepared.head_at): none
    is renewed (copied into its memo again) or decided again while the object is fresh."""
    fast_edge, framework = pair
    decider = fast_edge.fast.decider
    ranged = get("/big", "Range: bytes=10-19")
    requests = get("/small") + ranged + CLOSE
    frozen = start = time.time()
    monkeypatch.setattr(time, "time", lambda: frozen)
    for _ in range(2):  # a range is remembered when asked a second time (Decider.seen)
        await exchange(fast_edge.port, requests)
    heads = [(decider.memo, get("/small")), (decider.wholes, get("/big")), (decider.cuts, ranged)]
    kept = [memo.get(head) for memo, head in heads]
    assert None not in kept
    lookups: list[str] = []
    find_hit = decide.find_hit
    monkeypatch.setattr(decide, "find_hit", lambda *args: lookups.append(args[3]) or find_hit(*args))
    sent = []
    for later in (1, 2):
        frozen = start + later
        before = answered()
        ours = await exchange(fast_edge.port, requests)
        theirs = await exchange(framework.port, requests)
        assert answered() - before == 3
        assert age(ours) == expected_ages(fast_edge, frozen)
        assert age(theirs) == expected_ages(framework, frozen)
        assert await normalised(ours) == await normalised(theirs)
        assert all(memo.get(head) is p for (memo, head), p in zip(heads, kept, strict=True))
        sent.append([int(a) for a in age(ours)])
    assert [a + 1 for a in sent[0]] == sent[1]
    assert lookups == []
