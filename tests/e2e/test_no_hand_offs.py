"""Odd but legal GET and HEAD exchanges, and malformed heads, answered by a real node with no connection handed to
aiohttp (issue 14): each answer's exact status, fields and body, then edgecache_fast_path_total{outcome="handed_off"}
read from the node's own /metrics, which must stay at 0."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edgecache.config import ClusterSettings, Listen
from edgecache.core import popularity
from edgecache.core.hop import FIELD as HOP_FIELD
from edgecache.core.hop import Hop, sign
from edgecache.core.keepalive import KeepAlive
from edgecache.core.ring import Member, Ring
from edgecache.proxy import encode
from tests.conftest import CLUSTER_KEY, Edge, make_config, start_edge
from tests.e2e.adminkit import admin_node, node_config
from tests.e2e.procs import edge_process, free_port
from tests.e2e.test_client_address import v2 as v2_header
from tests.e2e.test_fast_path import get, get10, normalised
from tests.e2e.test_hot_spread import HOT
from tests.e2e.test_operations import metric
from tests.e2e.test_purge import cluster, heard, purge
from tests.origin import Obj, Origin
from tests.samples import applied, sample_value
from tests.wire import answered_while_draining, exchange, fast_path_outcomes, own_error, read_answer

BODY = bytes(range(256)) * 40  # 10,240 bytes
HOST = b"Host: video.test\r\n"


@contextlib.asynccontextmanager
async def both_paths(origin: Origin, tmp_path: Path) -> AsyncIterator[tuple[Edge, Edge]]:
    """A node answering on its fast path and one answering through aiohttp alone (fast_path = false), in front of
    the same origin: the second's answers are what the first's must be, byte for byte."""
    async with AsyncExitStack() as stack:
        fast, framework = [
            await stack.enter_async_context(
                start_edge(replace(make_config(tmp_path / name, [origin.url]), fast_path=on))
            )
            for name, on in (("fast", True), ("framework", False))
        ]
        yield fast, framework


def parse_error(answer: bytes, reason: str) -> bytes:
    """aiohttp's answer to a head its parser refuses (proxy.badhead.Handler), with the Date of `answer`: HTTP/1.0,
    400, our reason, no Connection field (an HTTP/1.0 answer closes)."""
    date = re.search(rb"\r\nDate: ([^\r]*)\r\n", answer)
    body = reason.encode()
    fields = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    head = encode.head(400, "Bad Request", fields, date.group(1) if date else b"", KeepAlive.CLOSE_10)
    assert head is not None
    return head + body


def no_version(answer: bytes, method: str) -> bytes:
    """Either path's 505 to a request of a version not HTTP/1.x, with the Date of `answer`: in HTTP/1.1, the highest
    version the node speaks (RFC 9110 6.2, RFC 9112 2.3), with `Connection: close`, then the close."""
    whole = own_error(answer, 505, "HTTP version not supported: only HTTP/1.0 and HTTP/1.1")
    return whole[: whole.index(b"\r\n\r\n") + 4] if method == "HEAD" else whole


async def answers(port: int, data: bytes, n: int) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """`n` answers with a Content-Length body each, to `data` sent on one connection (pipelined)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(20):
            return [await read_answer(reader) for _ in range(n)]
    finally:
        writer.close()


async def legal(port: int) -> None:
    get = b"GET /v.bin HTTP/1.1\r\n" + HOST + b"\r\n"
    (s1, _, b1), (s2, f2, b2) = await answers(port, get + get, 2)  # a miss, then a hit, pipelined
    assert (s1, b1, s2, b2) == (200, BODY, 200, BODY)
    assert f2[b"content-length"] == b"10240"
    cases = [
        (b"", 200, b"HEAD"),  # its Content-Length is the GET's, and no body follows
        (b'If-None-Match: "v1"\r\n', 304, b""),
        (b'If-Match: "other"\r\n', 412, None),
        (b"Range: bytes=20000-\r\n", 416, None),
        (b"Range: bytes=10-19\r\n", 206, BODY[10:20]),
        (b"Range: bytes=-5\r\n", 206, BODY[-5:]),
    ]
    for extra, want, want_body in cases:
        method = b"HEAD" if want_body == b"HEAD" else b"GET"
        close = b"Connection: close\r\n"  # the answer ends with the connection: no body is waited for by its length
        answer = await exchange(port, method + b" /v.bin HTTP/1.1\r\n" + HOST + extra + close + b"\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert int(head.split(b" ", 2)[1]) == want, (extra, head)
        if method == b"HEAD":
            assert (b"\r\nContent-Length: 10240" in head, body) == (True, b"")
        elif want_body is not None:
            assert body == want_body
    multi = b"GET /v.bin HTTP/1.1\r\n" + HOST + b"Range: bytes=0-1,100-102\r\n\r\n"
    [(status, fields, body)] = await answers(port, multi, 1)
    boundary = fields[b"content-type"].split(b"boundary=")[1]
    assert status == 206
    parts = [p for p in body.split(b"--" + boundary) if p.strip(b"\r\n-")]
    assert [p.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n") for p in parts] == [BODY[0:2], BODY[100:103]]
    # A range past the end of an object not cached yet: the origin's 416 to its fill, as the full handler answers it
    cold = b"GET /short.bin HTTP/1.1\r\n" + HOST + b"Range: bytes=3000000-\r\nConnection: close\r\n\r\n"
    head, _, body = (await exchange(port, cold)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 416 Requested Range Not Satisfiable\r\n"), head
    fields = b"\r\nCache-Status: edgecache; fwd=uri-miss\r\nAccept-Ranges: bytes\r\nContent-Range: bytes */1000\r\n"
    assert fields + b"Content-Type: text/plain\r\nContent-Length: 22\r\n" in head, head
    assert body == b"range not satisfiable\n"


BAD = [
    (
        b"GET /v.bin HTTP/1.1\r\n" + HOST + b"X-Long: " + b"v" * 9000 + b"\r\n\r\n",
        "request line or header field too long\n",
    ),
    (
        b"GET /v.bin HTTP/1.1\r\n" + HOST + b"".join(b"X-F%d: v\r\n" % i for i in range(300)) + b"\r\n",
        "malformed request\n",
    ),
    (b"GET /v.bin HTTP/1.1\r\n" + HOST + b"Accept: a\x00b\r\n\r\n", "malformed request\n"),
    (b"HEAD /v.bin HTTP/1.1\r\nContent-Type: a\r\nContent-Type: b\r\n" + HOST + b"\r\n", "malformed request\n"),
    (b"GET /v.bin HTTP/1.1\r\n" + HOST + b"X: a\r\n b\r\n\r\n", "malformed request\n"),  # obs-fold
    (b"GET /v.bin HTTP/1.1\nHost: video.test\n\n", "invalid request line\n"),  # bare LFs, no CRLF CRLF at all
    (
        b"GET * HTTP/1.1\r\n" + HOST + b"\r\n",
        "invalid request target: an absolute path, an absolute URL, or * for OPTIONS only\n",
    ),
    (b"G<b>T /v.bin HTTP/1.1\r\n" + HOST + b"\r\n", "invalid method\n"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "Received HTTPS traffic on an HTTP port"),
]


async def test_odd_requests_are_answered_without_a_hand_off(origin: Origin, tmp_path: Path) -> None:
    """Before, every malformed head was handed to aiohttp for its 400 (the commonest hand-off in tests/e2e)."""
    origin.put("/v.bin", BODY)
    origin.put("/short.bin", BODY[:1000])
    port, admin = free_port(), free_port()
    args = ["--origin", origin.url, "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"]
    async with edge_process(
        "serve", *args, "--cache-dir", str(tmp_path / "cache"), "--workers", "1", ready={b"admin listening on": 1}
    ):
        await legal(port)
        for head, reason in BAD:
            answer = await exchange(port, head + b"GET /v.bin HTTP/1.1\r\n" + HOST + b"\r\n")
            assert answer == parse_error(answer, reason), head[:40]
        for method, version in (("GET", "HTTP/2.0"), ("HEAD", "HTTP/0.9")):
            head = f"{method} /v.bin {version}\r\n".encode() + HOST + b"\r\n"
            answer = await exchange(port, head + b"GET /v.bin HTTP/1.1\r\n" + HOST + b"\r\n")
            assert answer == no_version(answer, method), head
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
            text = await r.text()
    assert (origin.hits["/v.bin"], origin.hits["/short.bin"]) == (1, 1)
    assert metric(text, "edgecache_fast_path_total", outcome="answered") > 0
    assert metric(text, "edgecache_fast_path_total", outcome="handed_off") == 0


def counts() -> list[float]:
    """The counters a 416 miss and the hit after it add to."""
    samples = [
        ("edgecache_requests_total", {"site": "videos", "method": m, "status_class": c, "cache_status": s})
        for m, c, s in (("GET", "4xx", "miss"), ("HEAD", "4xx", "miss"), ("GET", "2xx", "hit"), ("HEAD", "4xx", "hit"))
    ]
    samples += [("edgecache_misses_total", {"site": "videos", "cause": "cold"})]
    samples += [("edgecache_site_served_bytes_total", {"site": "videos", "upstream": w}) for w in ("origin", "cache")]
    return [sample_value(name, labels) or 0.0 for name, labels in samples]


# A range past the end of an object not cached yet: its fill's 416 tells the length (RangeMismatch), and the
# client's own range, unsatisfiable for it, gets that 416 (serving.past_the_end) on the fast path too.
# (path, request); each path is cold on both edges when asked.
PAST_THE_END: list[tuple[str, bytes]] = [
    ("/p1", get("/p1", "Range: bytes=5000000-")),  # the fill asks for slice 4, past the end of 1000 bytes
    ("/p2", get("/p2", "Range: bytes=5000000-", method="HEAD")),  # its fill asks for slice 0: stored, then a 416
    ("/p3", get10("/p3", "Range: bytes=3000000-3000009")),
    ("/p4", get("/p4", "Range: bytes=2000000-", "Connection: close")),  # the answer ends the connection
    ("/p5", get("/p5", "Range: bytes=2000000-") * 2),  # pipelined: nothing is stored, each asks the origin
    ("/empty", get("/empty", "Range: bytes=0-9")),  # any range of an empty object
    ("/empty-head", get("/empty-head", "Range: bytes=0-9", method="HEAD")),  # its 416's head alone
]


async def test_a_range_past_the_end_of_a_cold_object_is_answered_without_a_hand_off(
    origin: Origin, tmp_path: Path
) -> None:
    """The origin's 416 to the fill carried out as the full handler carries it out, byte for byte (its fields, Via,
    Cache-Status miss, the node's text), with one origin request; before, each was handed to aiohttp."""
    for path, _ in PAST_THE_END:
        origin.put(path, b"" if path.startswith("/empty") else BODY[:1000])
    origin.put("/small", BODY)
    async with both_paths(origin, tmp_path) as (fast, framework):
        for edge in (fast, framework):
            assert (await edge.get("/small"))[0] == 200
        close = get("/small", "Connection: close")
        for path, case in PAST_THE_END:
            before, counted = fast_path_outcomes(), counts()
            ours = await exchange(fast.port, case + close)
            outcomes, ours_counted = fast_path_outcomes(), counts()
            theirs = await exchange(framework.port, case + close)
            theirs_counted = counts()
            # Counted as the full handler counts it: request, miss cause, bytes served (close's hit included)
            assert [b - a for a, b in zip(counted, ours_counted, strict=True)] == [
                b - a for a, b in zip(ours_counted, theirs_counted, strict=True)
            ], path
            assert await normalised(ours) == await normalised(theirs), path
            assert ours.startswith((b"HTTP/1.1 416 ", b"HTTP/1.0 416 ", b"HTTP/1.1 206 ")), ours[:100]
            stored = b"; stored" if path == "/p2" else b""
            assert b"\r\nCache-Status: edgecache; fwd=uri-miss%s\r\n" % stored in ours, ours[:600]
            assert outcomes["handed_off"] - before["handed_off"] == 0, path
            assert origin.hits[path] == 2 * case.count(b" HTTP/1."), path  # once a request, on each edge
    assert origin.hits["/small"] == 2


V1 = bytes(range(251)) * 12533  # 3,145,783 bytes: slices 0-3 of 1 MiB
V2 = bytes(reversed(range(251))) * 12533


def joined(raw: bytes) -> bytes:
    """The pipelined request after the multipart one finds slice 0 of v2 stored (a hit) or still being written by
    that request's fill (joined: fwd=partial), as the fill's last bytes and the request race: either is right."""
    return raw.replace(b"\r\nCache-Status: edgecache; fwd=partial\r\n", b"\r\nCache-Status: edgecache; hit\r\n")


async def test_a_multipart_range_that_meets_a_new_version_before_its_first_byte_is_decided_again(
    origin: Origin, tmp_path: Path
) -> None:
    """A fresh copy holds slice 0 of v1; the origin has v2 now; a multipart Range needs slices 0 and 1, and slice
    1's fill meets v2 before any byte goes out. Never mixed: the entry goes and the request is a miss of v2, decided
    again on the fast path as a single range's is (diskhit), byte for byte as the full handler answers it, with as
    many origin requests. Before, the multipart one was handed to aiohttp."""
    async with both_paths(origin, tmp_path) as (fast, framework):
        shapes = ["Range: bytes=0-9,1048576-1048585", "Range: bytes=100-1048675"]  # the single range's was already
        for n, shape in enumerate(shapes):
            path = f"/cut{n}.bin"
            answers = []
            for edge in (fast, framework):
                origin.put(path, V1)
                assert (await edge.get(path, Range="bytes=0-99"))[2] == V1[:100]  # slice 0 of v1 only
                await edge.node.engine.flush()
                origin.put(path, V2, etag='"v2"', last_modified="Sun, 02 Nov 2025 00:00:00 GMT")
                before, hits = fast_path_outcomes(), origin.hits[path]
                answer = await exchange(
                    edge.port, get(path, shape) + get(path, "Range: bytes=0-9", "Connection: close")
                )
                answers.append((answer, origin.hits[path] - hits))
                assert fast_path_outcomes()["handed_off"] == before["handed_off"], shape
            (ours, our_hits), (theirs, their_hits) = answers
            assert await normalised(joined(ours)) == await normalised(joined(theirs)), shape
            assert our_hits == their_hits, shape
            assert ours.count(b" 206 Partial Content\r\n") == 2, shape
            assert (ours.count(b'\r\nETag: "v2"\r\n'), b'"v1"' in ours) == (2, False), shape
            assert (V2[:10] in ours, V2[2**20 : 2**20 + 10] in ours, V1[:10] in ours) == (True, True, False), shape


def requests_counted() -> dict[tuple[str, ...], float]:
    """Every request and served-bytes sample, by name and labels."""
    names = ["edgecache_requests_total", "edgecache_site_served_bytes_total"]
    return {
        (s.name, *sorted(s.labels.items())): s.value  # type: ignore[misc]
        for metric in applied().restricted_registry(names).collect()
        for s in metric.samples
        if s.name in names
    }


def counted_since(counted: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    """What requests_counted() added to since `counted` (a series made but not added to is none)."""
    now = requests_counted()
    return {k: v - counted.get(k, 0.0) for k, v in now.items() if v != counted.get(k, 0.0)}


# A GET or HEAD of a version llhttp takes and HTTP/1.x does not frame: 505 before anything is looked up, then the
# close (core.admit.version), whatever it asks for; the request after it is never read.
UNFRAMED = [
    get("/small").replace(b"HTTP/1.1", b"HTTP/2.0"),
    get("/small", method="HEAD").replace(b"HTTP/1.1", b"HTTP/0.9"),
    get("/cold", "Range: bytes=0-9", "Connection: keep-alive").replace(b"HTTP/1.1", b"HTTP/2.0"),
    get("/small", "Content-Length: 0").replace(b"HTTP/1.1", b"HTTP/0.9"),  # no body: a GET's all the same
]


async def test_a_get_of_a_version_other_than_http1x_gets_its_505_without_a_hand_off(
    origin: Origin, tmp_path: Path
) -> None:
    """The full handler's 505 (in HTTP/1.1), counted as it counts it, without asking the origin; before, each was
    handed to aiohttp for it."""
    origin.put("/small", BODY)
    origin.put("/cold", BODY)
    async with both_paths(origin, tmp_path) as (fast, framework):
        for edge in (fast, framework):
            assert (await edge.get("/small"))[0] == 200
        for case in UNFRAMED:
            before, counted = fast_path_outcomes(), requests_counted()
            ours = await exchange(fast.port, case + get("/small"))
            outcomes, ours_counted = fast_path_outcomes(), requests_counted()
            theirs = await exchange(framework.port, case + get("/small"))
            theirs_counted = requests_counted()
            assert await normalised(ours) == await normalised(theirs), case
            assert ours == no_version(ours, case.split(b" ")[0].decode())
            ours_delta = {k: v - counted.get(k, 0.0) for k, v in ours_counted.items() if v != counted.get(k, 0.0)}
            theirs_delta = {
                k: v - ours_counted.get(k, 0.0) for k, v in theirs_counted.items() if v != ours_counted.get(k, 0.0)
            }
            assert ours_delta == theirs_delta, case
            assert len(ours_delta) >= 1, case  # the 505 is counted
            assert outcomes["handed_off"] == before["handed_off"], case
            assert outcomes["answered"] == before["answered"] + 1, case
    assert (origin.hits["/small"], origin.hits["/cold"]) == (2, 0)


def odd_304(mode: str) -> Callable[[web.BaseRequest, Obj | None], Obj | web.Response | None]:
    """An origin whose revalidation 304 cannot update the stored copy (fillhead._of_304), by `mode`: another strong
    validator, another Vary, or fields a shared cache may not store; its 200s are the object it has now."""
    fields = {"Cache-Control": "max-age=100"}
    if mode == "etag":
        fields["ETag"] = '"v2"'
    elif mode == "vary":
        fields |= {"ETag": '"v1"', "Vary": "X-B"}
    else:
        fields = {"ETag": '"v1"', "Cache-Control": mode}

    def answer(request: web.BaseRequest, obj: Obj | None) -> Obj | web.Response | None:
        if request.headers.get("If-None-Match"):
            return web.Response(status=304, headers=fields)
        etag = fields.pop("ETag", '"v1"')
        new = Obj(b"NEW-BODY " + request.path.encode(), etag=etag, headers=fields)
        fields["ETag"] = etag
        return new

    return answer


async def test_a_revalidation_that_meets_another_version_is_decided_again_without_a_hand_off(
    origin: Origin, tmp_path: Path
) -> None:
    """A stale copy is revalidated on the fast path, and the origin's 304 cannot update it: the copy goes and the
    request is a miss of the version the origin has now, byte for byte as the full handler starts again
    (EdgeHandler._changed_before_head), with as many origin requests and the same counts. Before, each was handed
    to aiohttp with its fill."""
    modes: dict[str, Callable[[web.BaseRequest, Obj | None], Obj | web.Response | None]] = {}
    origin.on_request = lambda request, obj: modes[request.path](request, obj) if request.path in modes else None
    async with both_paths(origin, tmp_path) as (fast, framework):
        for mode in ("etag", "no-store", "private, max-age=100", "vary"):
            answers = []
            for edge in (fast, framework):
                path = f"/{mode[:7]}-{edge.port}"
                origin.put(path, b"OLD-BODY", headers={"Cache-Control": "max-age=100", "Age": "150"})  # stale
                assert (await edge.get(path))[2] == b"OLD-BODY"
                modes[path] = odd_304(mode)
                before, counted, hits = fast_path_outcomes(), requests_counted(), origin.hits[path]
                answer = await exchange(edge.port, get(path, "X-B: 1") + get(path, "X-B: 1", "Connection: close"))
                delta = counted_since(counted)
                handed_off = fast_path_outcomes()["handed_off"] - before["handed_off"]
                answers.append((answer.replace(path.encode(), b"/path"), delta, origin.hits[path] - hits, handed_off))
            (ours, our_counts, our_hits, ours_handed), (theirs, their_counts, their_hits, _) = answers
            assert await normalised(ours) == await normalised(theirs), mode
            assert (our_counts, our_hits) == (their_counts, their_hits), mode
            assert (ours.count(b"NEW-BODY /path"), b"OLD-BODY" in ours) == (2, False), mode
            assert ours_handed == 0, mode


async def test_a_miss_filled_while_standing_in_is_answered_from_its_fill_when_the_owner_comes_back(
    origin: Origin, tmp_path: Path
) -> None:
    """node1 stands in for node2, which is down, and fills an object node2 owns; node2 comes back up before the
    origin's head arrives (as a peer probed before it listened does at startup: test_cluster_kill). The request that
    started the fill and one that joined it are answered from that fill, as the full handler answers a request it
    routed once; before, both were decided again on the fast path, found node2's, and handed to aiohttp."""
    node2 = Member("node2", f"127.0.0.1:{free_port()}")  # nothing listens there: the forward would be refused
    answers = []
    for fast_path in (True, False):
        port = free_port()
        members = (Member("node1", f"127.0.0.1:{port}"), node2)
        ring = Ring.of(members)
        path = next(f"/o{i}" for i in range(1000) if ring.owner(f"videos|video.test|/o{i}") == node2)
        origin.put(path, BODY)
        settings = ClusterSettings("node1", key=CLUSTER_KEY, nodes=members, interval=3600, rise=1, fall=1_000_000)
        config = make_config(tmp_path / str(fast_path), [origin.url])
        config = replace(config, listen=(Listen("127.0.0.1", port),), cluster=settings, fast_path=fast_path)
        async with start_edge(config) as edge:
            view = edge.node.cluster
            assert view is not None
            view.failed("node2", "the test took it down")
            origin.gate = asyncio.Event()
            before, counted, seen, hits = fast_path_outcomes(), requests_counted(), len(origin.seen), origin.hits[path]
            asked = [asyncio.create_task(exchange(edge.port, get(path, "Connection: close"))) for _ in range(2)]
            await origin.wait_for_requests(seen + 1)
            async with asyncio.timeout(10):  # a counter, no event: both are decided, one fill started, one joined
                while edge.node.shared.in_flight < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0)
            view.record("node2", True)  # up again (rise = 1) while the origin holds the fill's head
            assert view.is_up("node2")
            origin.gate.set()
            got = await asyncio.gather(*asked)
            origin.gate = None
            handed_off = fast_path_outcomes()["handed_off"] - before["handed_off"]
            answers.append(([await normalised(a) for a in got], counted_since(counted), handed_off))
            assert origin.hits[path] - hits == 1, fast_path  # the second request joined the first's fill
            assert view.is_up("node2"), fast_path  # never forwarded there (a refused forward takes it down)
    (ours, our_counts, ours_handed), (theirs, their_counts, _) = answers
    # Either request may be the one whose fill the other joined (the two connections race): compared as a set.
    assert sorted(ours) == sorted(theirs)
    assert our_counts == their_counts
    assert [a.split(b"\r\n\r\n", 1)[1] for a in ours] == [BODY, BODY]
    assert [a.split(b"\r\n", 1)[0] for a in ours] == [b"HTTP/1.1 200 OK"] * 2
    assert ours_handed == 0


async def test_an_unstored_answer_for_another_variant_is_asked_again_without_a_hand_off(
    origin: Origin, tmp_path: Path
) -> None:
    """A first miss knows no Vary, and the answer its fill brings Varies on a field the request has; not stored
    (private, or of unknown length until it ends), it leaves no record naming that Vary. The request is decided
    again with the Vary the answer named (PrimaryRecord.named), as the full handler looks again with it: the field
    is sent, and the answers are byte for byte a fast_path=false node's. Before, each was handed to aiohttp."""
    asked: list[str | None] = []

    async def hook(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse:
        asked.append(request.headers.get("X-Device"))
        cc = "private, max-age=600" if request.path.startswith("/private") else "max-age=600"
        resp = web.StreamResponse(headers={"Vary": "X-Device", "Cache-Control": cc})
        if not request.path.startswith("/private"):
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"for " + request.headers.get("X-Device", "-").encode())
        await resp.write_eof()
        return resp

    origin.on_request = hook
    async with both_paths(origin, tmp_path) as (fast, framework):
        for kind in ("private", "chunked"):
            answers = []
            for edge in (fast, framework):
                path = f"/{kind}-{edge.port}"
                before, counted = fast_path_outcomes(), requests_counted()
                del asked[:]
                answer = await exchange(edge.port, get(path, "X-Device: phone", "Connection: close"))
                handed_off = fast_path_outcomes()["handed_off"] - before["handed_off"]
                answers.append((answer.replace(path.encode(), b"/path"), counted_since(counted), handed_off))
                assert asked == [None, "phone"], (kind, edge.port)  # the field is sent once the Vary is known
            (ours, our_counts, ours_handed), (theirs, their_counts, _) = answers
            assert await normalised(ours) == await normalised(theirs), kind
            assert our_counts == their_counts, kind
            assert ours.startswith(b"HTTP/1.1 200 OK\r\n"), ours
            assert ours.endswith(b"\r\n\r\n9\r\nfor phone\r\n0\r\n\r\n"), ours
            assert ours_handed == 0, kind


async def test_a_first_vary_miss_on_a_draining_connection_is_decided_again_without_a_hand_off(
    origin: Origin, tmp_path: Path
) -> None:
    """The connection starts draining while the first fill is out, and its answer names a Vary: the request, let in
    before the drain, is decided again as its variant's miss on the fast path (FastPath.again keeps its head
    processed), answered with the field's variant and then closed. Before, it was handed to aiohttp."""
    release, asked = asyncio.Event(), asyncio.Event()
    seen: list[str | None] = []

    async def held(request: web.BaseRequest, obj: Obj | None) -> web.Response:
        seen.append(request.headers.get("X-Device"))
        asked.set()
        await release.wait()
        headers = {"Cache-Control": "public, max-age=600", "Vary": "X-Device", "Content-Type": "text/plain"}
        return web.Response(body=f"for {request.headers.get('X-Device', 'anyone')}".encode(), headers=headers)

    origin.put("/v", b"")
    origin.on_request = held
    async with start_edge(make_config(tmp_path / "c", [origin.url])) as edge, asyncio.timeout(20):
        before = fast_path_outcomes()
        request = b"GET /v HTTP/1.1\r\nHost: video.test\r\nX-Device: phone\r\n\r\n"
        answer = await answered_while_draining(edge.port, edge.fast, request, asked, release)
        outcomes = fast_path_outcomes()
    fields = b"Cache-Control: public, max-age=600\r\nVary: X-Device\r\nContent-Type: text/plain\r\nDate: -\r\n"
    fields += b"Server: Python/3.11 aiohttp/3.14.5\r\nVia: 1.1 edgecache\r\nAge: -\r\n"
    fields += b"Cache-Status: edgecache; fwd=uri-miss; stored\r\nAccept-Ranges: bytes\r\nContent-Length: 9\r\n"
    assert await normalised(answer) == b"HTTP/1.1 200 OK\r\n" + fields + b"\r\nfor phone"
    assert seen == [None, "phone"]
    assert (outcomes["handed_off"] - before["handed_off"], outcomes["answered"] - before["answered"]) == (0, 1)


# What reaches a plain listener beginning with empty lines (CRLF CRLF): llhttp skips them before a request line, so
# the head is what follows, not the empty lines.
LEADING_CRLF = [
    v2_header("203.0.113.7") + get("/small"),  # a PROXY v2 header on a listener expecting none: 400, as aiohttp's
    b"\r\n\r\n" + get("/small", "Connection: close"),  # blank lines a client sent after its last request: served
    b"\r\n\r\n\r\n" + get("/small", "Range: bytes=0-9", "Connection: close"),
]


async def test_a_head_after_empty_lines_is_answered_without_a_hand_off(origin: Origin, tmp_path: Path) -> None:
    """Before, the fast path took the empty lines for a head of their own, decided nothing of it, and handed the
    connection to aiohttp (a PROXY v2 header on a plain listener begins with CRLF CRLF)."""
    origin.put("/small", BODY)
    async with both_paths(origin, tmp_path) as (fast, framework):
        for edge in (fast, framework):
            assert (await edge.get("/small"))[0] == 200
        for case in LEADING_CRLF:
            before = fast_path_outcomes()
            ours = await exchange(fast.port, case)
            outcomes = fast_path_outcomes()
            theirs = await exchange(framework.port, case)
            assert await normalised(ours) == await normalised(theirs), case
            assert outcomes["handed_off"] == before["handed_off"], case
            if case is LEADING_CRLF[0]:
                assert ours == parse_error(ours, "invalid method\n")  # the NUL after the empty lines
        assert ours.endswith(b"\r\n\r\n" + BODY[:10]), ours
    assert origin.hits["/small"] == 2


async def purge_race(origin: Origin, tmp_path: Path, fast: bool, revalidated: bool) -> tuple[bytes, int, float]:
    """A request's fill (a stale copy's revalidation when `revalidated`, else a miss) held at the origin across a
    soft purge, after which another node's request has a fill of its own, which stores the new version (before the
    304; with the miss's, held too); then the held fill's head comes: a 304 about the old copy, or the old bytes.
    That request's answer, the origin requests for the object, and the hand-offs meanwhile."""
    path, stale = ("/reval", {"Cache-Control": "public, max-age=0"}) if revalidated else ("/joined0", {})
    origin.put(path, b"version one", headers=stale)
    hits, release = origin.hits[path], asyncio.Event()

    async def hold(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse | None:
        if request.path != path or (revalidated and request.headers.get("If-None-Match") != '"v1"'):
            return None
        if revalidated:
            origin.on_request = None  # the first alone: the other node's request stores the new version meanwhile
        await release.wait()
        return web.Response(status=304, headers={"ETag": '"v1"', **stale}) if revalidated else None  # or v1

    async with cluster(origin, tmp_path / f"{fast}-{revalidated}", fast) as nodes:
        if revalidated:
            assert (await nodes[0].edge.get(path))[::2] == (200, b"version one")
        origin.on_request = hold
        before, seen = fast_path_outcomes()["handed_off"], len(origin.seen)
        first = asyncio.ensure_future(exchange(nodes[0].edge.port, get(path, "Connection: close")))
        try:
            async with asyncio.timeout(10):
                await origin.wait_for_requests(seen + 1)  # held at the origin
                origin.put(path, b"version two", etag='"v2"', headers=stale)
                assert (await purge(nodes[1], {"url": f"http://video.test{path}", "soft": True}))[0] == 200
                await heard(nodes)
                second = asyncio.ensure_future(nodes[2].edge.get(path))
                # A miss's fill is held with the first (as test_purge asks it): the two heads come together, and the
                # new version's copy may be stored first
                await (second if revalidated else origin.wait_for_requests(seen + 2))
        finally:
            release.set()
            origin.on_request = None
        status, headers, body = await second
        assert (status, headers["ETag"], body) == (200, '"v2"', b"version two")
        answer = await first
        return answer, origin.hits[path] - hits, fast_path_outcomes()["handed_off"] - before


async def test_a_fill_held_across_a_soft_purge_is_answered_without_a_hand_off(origin: Origin, tmp_path: Path) -> None:
    """Another fill stored the new version while this request's was at the origin. A late 304 about the old copy is
    answered as the full handler answers it, byte for byte: the copy stored now, confirmed; and a miss's own fill,
    asked before the purge, with its own (old) version's fields and bytes, never the stored copy's. Before, each
    was refused by hit.as_fetched's version check and handed to aiohttp with its fill."""
    for revalidated, etag, body, hits in ((True, b'"v2"', b"version two", 3), (False, b'"v1"', b"version one", 2)):
        ours, our_hits, handed_off = await purge_race(origin, tmp_path, True, revalidated)
        theirs, their_hits, _ = await purge_race(origin, tmp_path, False, revalidated)
        # Whether the purge overtook the miss's fill (Cache-Status "invalidated", no Accept-Ranges: not stored) is
        # a race on either path; the version and its bytes are not.
        if revalidated:
            assert await normalised(ours) == await normalised(theirs), (ours, theirs)
        for answer in (ours, theirs):
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
            assert answer.endswith(b"\r\n\r\n" + body), answer
        assert (b"\r\nETag: " + etag + b"\r\n" in ours, ours.endswith(b"\r\n\r\n" + body)) == (True, True), ours
        assert (our_hits, their_hits, handed_off) == (hits, hits, 0), revalidated


MiB = 2**20
BIG = bytes(i % 251 for i in range(3 * MiB))
VARIED = {"Cache-Control": "public, max-age=3600", "Vary": "Accept"}


async def purged_after_its_judge(origin: Origin, tmp_path: Path, fast: bool) -> tuple[bytes, int, float]:
    """A cold miss of a Vary'd object whose fill's head was judged (to be stored, under the generation it was asked
    under) and then waits for fill memory that another fill holds; its URL is purged meanwhile, so when the head is
    in, the object is keyed under a new generation and nothing is stored there. Its answer, the origin requests of
    the path, and the hand-offs it made."""
    path = "/fast.bin" if fast else "/framework.bin"
    origin.put(path, b"1" * 100_000, etag='"v1"', headers=VARIED)
    release = asyncio.Event()

    async def hold_big(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != "/big.bin":
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600", "ETag": '"b"'})
        resp.content_length = len(BIG)
        await resp.prepare(request)
        await resp.write(BIG[:1000])
        await release.wait()
        await resp.write(BIG[1000:])
        return resp

    origin.on_request = hold_big
    cfg = node_config(origin, tmp_path / path[1:])
    cfg = replace(cfg, fast_path=fast, cache=replace(cfg.cache, fill_slices=1, fill_memory=MiB))
    async with admin_node(cfg) as node:
        before, hits = fast_path_outcomes()["handed_off"], origin.hits[path]
        big = asyncio.ensure_future(node.edge.get("/big.bin"))  # holds the fill memory
        try:
            async with asyncio.timeout(10):
                await origin.wait_for_requests(len(origin.seen) + 1)
                asked = asyncio.ensure_future(exchange(node.edge.port, get(path, "Connection: close")))
                # Judged, then waiting for memory: a gauge, polled
                while (sample_value("edgecache_fill_memory_waiting", {"pool": "shared"}) or 0) < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            status, purged = await node.call("POST", "/purge", json={"url": f"http://video.test{path}"})
            assert status == 200, purged
        finally:
            release.set()
            origin.on_request = None
        async with asyncio.timeout(10):
            assert (await big)[2] == BIG
            answer = await asked
        handed_off = fast_path_outcomes()["handed_off"] - before
        return answer.replace(path.encode(), b"/path"), origin.hits[path] - hits, handed_off


async def test_a_miss_whose_object_is_purged_after_its_fills_head_was_judged_is_answered_from_that_fill(
    origin: Origin, tmp_path: Path
) -> None:
    """Answered from the fill the miss started, as the full handler answers it (EdgeHandler._serve_head: the fill's
    head names its own key), byte for byte, with one origin request: the bytes asked before the purge. Before, the
    fast path decided the request again under the new generation, found nothing there, and handed it to aiohttp with
    its fill (test_worker_purge_window and test_worker_purge_whole met it with two workers)."""
    ours, our_hits, handed_off = await purged_after_its_judge(origin, tmp_path, True)
    theirs, their_hits, _ = await purged_after_its_judge(origin, tmp_path, False)
    assert await normalised(ours) == await normalised(theirs), (ours[:600], theirs[:600])
    assert (ours[:17], ours.endswith(b"\r\n\r\n" + b"1" * 100_000)) == (b"HTTP/1.1 200 OK\r\n", True), ours[:600]
    assert b"\r\nCache-Status: edgecache; fwd=uri-miss; stored\r\n" in ours, ours[:600]
    assert (our_hits, their_hits, handed_off) == (1, 1, 0)


async def doubted_copy_purged(origin: Origin, tmp_path: Path, fast: bool) -> tuple[bytes, dict[tuple[str, ...], float]]:
    """test_hot_copies' purge met while a doubted hot copy is revalidated with its owner, whose cache answers the
    new version, not to be stored (the purge overtook it): the answer, and what it added to the request and
    served-bytes counters."""
    old, new = b"o" * 50_000, b"n" * 60_000
    origin.put(HOT, old, etag='"v1"')
    key = f"videos|video.test|{HOT}"
    owner_id = Ring.of(Member(f"node{i}", "-") for i in (1, 2, 3)).owner(key)
    assert owner_id is not None
    async with cluster(origin, tmp_path / ("fast" if fast else "framework"), fast) as nodes:
        edges = [n.edge for n in nodes]
        owner = next(e for e in edges if e.node.cluster and e.node.cluster.self_id == owner_id.id)
        edge = next(e for e in edges if e.node.cluster and e.node.cluster.self_id != owner_id.id)
        for _ in range(popularity.THRESHOLD + 1):
            assert (await edge.get(HOT))[::2] == (200, old)
        assert (await edge.get(HOT))[1]["Cache-Status"] == "edgecache; hit"  # its copy
        origin.put(HOT, new, etag='"v2"')
        await owner.node.store.invalidate(key)  # the purge, applied at the owner
        edge.node.store.doubt(time.time())  # this node was paused meanwhile: it may have missed it
        origin.gate, asked, counted = asyncio.Event(), len(origin.seen), requests_counted()
        answer = asyncio.ensure_future(exchange(edge.port, get(HOT, "Connection: close")))
        try:
            async with asyncio.timeout(10):
                await origin.wait_for_requests(asked + 1)  # the copy's revalidation, at the owner's origin
            await edge.node.store.invalidate(key)  # the purge reaches this node now
            edge.node.store.doubt(None)
        finally:
            origin.gate.set()
            origin.gate = None
        async with asyncio.timeout(10):
            return await answer, counted_since(counted)


async def test_a_hot_copys_revalidation_its_owner_answers_unstored_is_streamed_without_a_hand_off(
    origin: Origin, tmp_path: Path
) -> None:
    """The owner's answer (a peer cache's) is not stored here, and the copy's fill brought only its first slices:
    passed through as the full handler passes it (serving.serve_fill), its bytes counted as the peer's, byte for
    byte and counter for counter, with as many origin requests. Before, a peer's answer to a fill was left to the
    full handler: handed off."""
    before, hits = fast_path_outcomes()["handed_off"], origin.hits[HOT]
    ours, our_counts = await doubted_copy_purged(origin, tmp_path, True)
    handed_off, our_hits = fast_path_outcomes()["handed_off"] - before, origin.hits[HOT] - hits
    theirs, their_counts = await doubted_copy_purged(origin, tmp_path, False)
    assert await normalised(ours) == await normalised(theirs), (ours[:600], theirs[:600])
    assert (ours[:17], ours.endswith(b"\r\n\r\n" + b"n" * 60_000)) == (b"HTTP/1.1 200 OK\r\n", True), ours[:600]
    assert our_counts == their_counts
    assert (our_hits, origin.hits[HOT] - hits - our_hits, handed_off) == (3, 3, 0)


def churned(n: int) -> bytes:
    return bytes((i * (n + 2) + n) % 251 for i in range(3 * 64 * 1024 + 100))  # slices 0-3 of 64 KiB


async def test_ranges_whose_fills_keep_meeting_new_versions_are_relayed_without_a_hand_off(
    origin: Origin, tmp_path: Path
) -> None:
    """Every origin request gets the next version of the path (ETag "vN"). A cold list of ranges needs slices 0, 2
    and 3; their fills meet a new version, the request starts again as a miss, whose fills meet another: at that
    second change the request is relayed from one origin request, unstored (core.churn: a list of ranges asks for
    the whole object), as the full handler relays it: the same head, counted alike, the bytes of the version the
    relay got. (Which fill meets a new version first is a race on either path, so how many origin requests came
    before the relay may differ by one between the two paths.) Before, the fast path handed the request to aiohttp
    at its second change, whose handler counted its tries from nothing and filled again."""
    served: dict[str, int] = {}

    async def next_version(request: web.BaseRequest, obj: Obj | None) -> Obj:
        served[request.path] = n = served.get(request.path, 0) + 1
        return Obj(churned(n), etag=f'"v{n}"', last_modified=None)

    origin.on_request = next_version
    async with AsyncExitStack() as stack:
        answers = []
        for name, on in (("fast", True), ("framework", False)):
            config = replace(make_config(tmp_path / name, [origin.url], fill_slices=1, slice_bytes=64 * 1024))
            edge = await stack.enter_async_context(start_edge(replace(config, fast_path=on)))
            path = f"/{name}.bin"
            origin.put(path, churned(0))
            before, counted = fast_path_outcomes(), requests_counted()
            answer = await exchange(edge.port, get(path, "Range: bytes=-10,140000-140010", "Connection: close"))
            delta = counted_since(counted)
            handed_off = fast_path_outcomes()["handed_off"] - before["handed_off"]
            answers.append((answer.replace(path.encode(), b"/path"), delta, served[path], handed_off))
    (ours, our_counts, our_hits, ours_handed), (theirs, their_counts, their_hits, _) = answers
    for answer, hits in ((ours, our_hits), (theirs, their_hits)):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b'\r\nCache-Status: edgecache; fwd=uri-miss; detail="changing"\r\n' in head, head
        assert (body, b'\r\nETag: "v%d"\r\n' % hits in head) == (churned(hits), True), head
    unversioned = [re.sub(rb'\r\nETag: "v\d+"', b"", a.partition(b"\r\n\r\n")[0]) for a in (ours, theirs)]
    assert await normalised(unversioned[0]) == await normalised(unversioned[1])
    assert (our_counts, ours_handed) == (their_counts, 0)


@pytest.mark.parametrize(
    ("stored", "asks"),
    [
        ("max-age=0", ()),
        ("max-age=0, stale-while-revalidate=600", ()),
        ("max-age=0, stale-if-error=600", ()),
        ("max-age=0", ("Cache-Control: max-stale=600",)),
    ],
    ids=["stale", "while-revalidate", "if-error", "max-stale"],
)
async def test_a_look_aside_for_an_entry_held_stale_is_not_held_without_a_hand_off(
    origin: Origin, tmp_path: Path, stored: str, asks: tuple[str, ...]
) -> None:
    """An owner asks node1 what it holds (a look-aside, as a new owner asks the previous one after a node went
    down: test_cluster_kill) of an entry node1 holds stale: the full handler's 504 "not held", byte for byte, not
    counted as a viewer's request, and no origin request. Before, find_cold gave up on a stored entry it may not
    fill, and the request was handed to aiohttp. Stale as a viewer may have it (stale-while-revalidate, or a
    max-stale the look-aside carries) it is not held either: before, find_hit answered it on the fast path (and
    revalidated a stale-while-revalidate entry in the background, a fill)."""
    node2 = Member("node2", f"127.0.0.1:{free_port()}")  # never asked: nothing listens there
    answers = []
    for fast_path in (True, False):
        port = free_port()
        members = (Member("node1", f"127.0.0.1:{port}"), node2)
        ring = Ring.of(members)
        path = next(f"/s{i}" for i in range(1000) if ring.owner(f"videos|video.test|/s{i}") == members[0])
        origin.put(path, BODY, headers={"Cache-Control": stored})  # stored, and stale at once
        settings = ClusterSettings("node1", key=CLUSTER_KEY, nodes=members, interval=3600, rise=1, fall=1_000_000)
        config = make_config(tmp_path / str(fast_path), [origin.url])
        config = replace(config, listen=(Listen("127.0.0.1", port),), cluster=settings, fast_path=fast_path)
        async with start_edge(config) as edge:
            assert (await edge.get(path))[::2] == (200, BODY)
            await edge.node.engine.flush()
            looking = Hop("node2", int(time.time()), "la", "-", False, lookaside=True)
            hop = sign(CLUSTER_KEY, looking, "GET", f"videos|video.test|{path}")
            before, counted, hits = fast_path_outcomes(), requests_counted(), origin.hits[path]
            answer = await exchange(edge.port, get(path, f"{HOP_FIELD}: {hop}", *asks, "Connection: close"))
            handed_off = fast_path_outcomes()["handed_off"] - before["handed_off"]
            answers.append((await normalised(answer.replace(path.encode(), b"/path")), counted_since(counted)))
            assert (origin.hits[path] - hits, handed_off) == (0, 0), fast_path  # none counted with it off
    (ours, our_counts), (theirs, their_counts) = answers
    assert ours == theirs, (ours, theirs)
    assert ours.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), ours
    assert our_counts == their_counts == {}
