"""An origin's answer without Content-Type reaches the viewer without one (RFC 9110 7.7, 8.3: proxy.exact), as
nginx's proxy_cache, Varnish and Traffic Server pass it: on a miss, hits, a range, a multipart range (its parts
untyped too), a HEAD, a pass-through, the fast path and aiohttp's alike, and through a second node of a cluster.
aiohttp's server, and the fast path after it, added `Content-Type: application/octet-stream`."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.secondnode import through_a_second_node
from tests.e2e.test_cache_status import settled
from tests.e2e.test_fast_path import get, normalised
from tests.e2e.test_no_hand_offs import both_paths
from tests.origin import RawOrigin, RawReply, RawRequest
from tests.wire import exchange

BODY = b"0123456789" * 10


def reply(request: RawRequest) -> RawReply:
    head = b'HTTP/1.1 200 OK\r\nETag: "u1"\r\nCache-Control: max-age=600\r\nContent-Length: %d\r\n\r\n' % len(BODY)
    return head + (b"" if request.method == "HEAD" else BODY), False


CLOSE = "Connection: close"
ASKED = [
    get("/u", CLOSE),  # a miss, then hits
    get("/u", CLOSE),
    get("/u", "Range: bytes=2-5", CLOSE),
    get("/u", CLOSE, method="HEAD"),
    get("/h", CLOSE, method="HEAD"),  # a HEAD's miss
    get("/p", "Cache-Control: no-store", CLOSE),  # passed through
    get("/p", "Cache-Control: no-store", CLOSE, method="HEAD"),
]


def untyped(answer: bytes) -> None:
    assert answer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 206 ")), answer
    assert b"\r\nContent-Type:" not in answer, answer


async def test_no_type_is_added_on_either_path(tmp_path: Path) -> None:
    origin = RawOrigin(reply)
    await origin.start()
    try:
        async with both_paths(origin, tmp_path) as (fast, framework):  # type: ignore[arg-type]
            for request in ASKED:
                ours, theirs = await exchange(fast.port, request), await exchange(framework.port, request)
                await settled(fast, framework)
                untyped(ours)
                assert await normalised(ours) == await normalised(theirs), request
            multi = await exchange(fast.port, get("/u", "Range: bytes=2-5,7-8", CLOSE))
            assert await normalised(multi) == await normalised(
                await exchange(framework.port, get("/u", "Range: bytes=2-5,7-8", CLOSE))
            )
            types = re.findall(rb"\r\nContent-Type: ([^\r]*)", multi)
            assert types == [b"multipart/byteranges; boundary=" + types[0].rpartition(b"=")[2]], multi
            assert multi.count(b"\r\nContent-Range: bytes ") == 2, multi
        assert origin.hits == {"/u": 2, "/h": 2, "/p": 4}
    finally:
        await origin.stop()


async def test_no_type_is_added_through_a_second_node(tmp_path: Path) -> None:
    await through_a_second_node(reply, tmp_path, BODY, untyped)
