"""An origin's field names reach the viewer in the origin's case, in its order, repeated lines kept apart: on a miss,
hits from memory and from disk, a range, a HEAD, the fast path and aiohttp's alike, and through a second node of a
cluster. Field names are case-insensitive (RFC 9110 5.1), but a cache passes the head on as it came, as nginx,
Varnish and Traffic Server do: aiohttp's client gave the names it knows in its own case (`ETag` as `Etag`, `vary` as
`Vary`, `set-cookie` as `Set-Cookie`), and those were stored and served."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.secondnode import through_a_second_node
from tests.e2e.test_cache_status import settled
from tests.e2e.test_fast_path import get, normalised
from tests.e2e.test_no_hand_offs import both_paths
from tests.origin import RawOrigin, RawReply, RawRequest
from tests.wire import exchange

BODY = b"0123456789" * 10
FIELDS = (
    b'ETag: "n1"\r\ncache-control: max-age=600\r\nCONTENT-TYPE: text/plain\r\nlink: <a>; rel=preload\r\n'
    b"X-lower-Mixed: v\r\nLINK: <b>; rel=preload\r\nvary: X-Device\r\nwww-authenticate: Basic\r\n"
)


def reply(request: RawRequest) -> RawReply:
    head = b"HTTP/1.1 200 OK\r\n" + FIELDS + b"Content-Length: %d\r\n\r\n" % len(BODY)
    return head + (b"" if request.method == "HEAD" else BODY), False


def as_sent(answer: bytes) -> None:
    assert answer.startswith((b"HTTP/1.1 200 OK\r\n" + FIELDS, b"HTTP/1.1 206 Partial Content\r\n" + FIELDS)), answer


CLOSE = "Connection: close"
ASKED = [
    get("/n", CLOSE),  # a miss, then hits
    get("/n", CLOSE),
    get("/n", "Range: bytes=2-5", CLOSE),
    get("/n", CLOSE, method="HEAD"),
    get("/h", CLOSE, method="HEAD"),  # a HEAD's miss
]


async def test_field_names_keep_their_case_on_either_path(tmp_path: Path) -> None:
    origin = RawOrigin(reply)
    await origin.start()
    try:
        for asked in (ASKED, ASKED[1:4]):  # then hits from disk, after a restart
            async with both_paths(origin, tmp_path) as (fast, framework):  # type: ignore[arg-type]
                for request in asked:
                    ours, theirs = await exchange(fast.port, request), await exchange(framework.port, request)
                    await settled(fast, framework)
                    as_sent(ours)
                    assert await normalised(ours) == await normalised(theirs), request
        assert origin.hits == {"/n": 2, "/h": 2}
    finally:
        await origin.stop()


async def test_field_names_keep_their_case_through_a_second_node(tmp_path: Path) -> None:
    await through_a_second_node(reply, tmp_path, BODY, as_sent)
