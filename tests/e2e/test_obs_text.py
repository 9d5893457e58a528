"""A field value's obs-text (bytes 0x80-0xFF, legal in a value: RFC 9110 5.5) reaches the viewer as the origin sent
it, byte for byte, on every way an answer is written: a miss, a hit from memory and from disk (after a restart), a
range, a multipart range, a HEAD, a 304 of the node's own, an answer revalidated by the origin's 304 (whose fields
replace the stored ones), the fast path and aiohttp's (fast_path = false), and through a second node of a cluster.
aiohttp's client reads such bytes as lone surrogates; its server's writer, and the fast path's encoder, dropped
them: `filename="t\\xe9st.mp4"` went out as `filename="tst.mp4"`."""

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
NAME = b"X-Name: caf\xe9\r\n"
DISPOSITION = b'Content-Disposition: attachment; filename="t\xe9st.mp4"\r\n'
ETAG = b'"v\xe9"'
REVALIDATED = b"X-Name: caf\xe9 2\r\n"


def reply(request: RawRequest) -> RawReply:
    """/r* must be revalidated at every request, and its 304 brings a new X-Name; any other path is fresh for
    10 minutes. Every answer's head has obs-text in three fields."""
    fresh = b"max-age=0" if request.path.startswith("/r") else b"max-age=600"
    common = b"ETag: " + ETAG + b"\r\nCache-Control: " + fresh + b"\r\nContent-Type: video/mp4\r\n"
    if request.header("if-none-match") is not None:
        return b"HTTP/1.1 304 Not Modified\r\n" + common + REVALIDATED + b"\r\n", False
    head = b"HTTP/1.1 200 OK\r\n" + common + NAME + DISPOSITION + b"Content-Length: %d\r\n\r\n" % len(BODY)
    return head + BODY, False


def head_of(answer: bytes) -> bytes:
    return answer[: answer.index(b"\r\n\r\n") + 2]


def assert_exact(answer: bytes, *lines: bytes) -> None:
    head = head_of(answer)
    for line in lines:
        assert b"\r\n" + line in head, (line, head)
    assert re.search(rb'\r\nETag: "v\xe9"\r\n', head, re.IGNORECASE), head


CLOSE = "Connection: close"
ASKED = [  # (request, the obs-text lines its answer must carry)
    (get("/a", CLOSE), (NAME, DISPOSITION)),  # a miss, then hits
    (get("/a", CLOSE), (NAME, DISPOSITION)),
    (get("/a", "Range: bytes=2-5", CLOSE), (NAME, DISPOSITION)),
    (get("/a", "Range: bytes=2-5,7-8", CLOSE), (NAME, DISPOSITION)),
    (get("/a", CLOSE, method="HEAD"), (NAME, DISPOSITION)),
    (get("/a", 'If-None-Match: "v\xe9"', CLOSE).replace(b"v\xc3\xa9", b"v\xe9"), ()),  # the ETag's own bytes
    (get("/h", CLOSE, method="HEAD"), (NAME, DISPOSITION)),  # a HEAD's miss
    (get("/r", CLOSE), (NAME, DISPOSITION)),  # stored, then revalidated: the 304's X-Name replaces the stored one
    (get("/r", CLOSE), (REVALIDATED, DISPOSITION)),
]


async def test_obs_text_kept_on_every_path(tmp_path: Path) -> None:
    origin = RawOrigin(reply)
    await origin.start()
    try:
        async with both_paths(origin, tmp_path) as (fast, framework):  # type: ignore[arg-type]
            for request, lines in ASKED:
                ours, theirs = await exchange(fast.port, request), await exchange(framework.port, request)
                await settled(fast, framework)
                assert_exact(ours, *lines)
                assert await normalised(ours) == await normalised(theirs), request
        assert origin.hits == {"/a": 2, "/h": 2, "/r": 4}
        async with both_paths(origin, tmp_path) as (fast, framework):  # type: ignore[arg-type]
            for request, lines in ASKED[1:6]:  # hits from disk: the stored heads kept the bytes
                ours, theirs = await exchange(fast.port, request), await exchange(framework.port, request)
                await settled(fast, framework)
                assert b"Cache-Status: edgecache; hit\r\n" in ours, ours
                assert_exact(ours, *lines)
                assert await normalised(ours) == await normalised(theirs), request
        assert origin.hits["/a"] == 2
    finally:
        await origin.stop()


async def test_obs_text_kept_through_a_second_node(tmp_path: Path) -> None:
    await through_a_second_node(reply, tmp_path, BODY, lambda answer: assert_exact(answer, NAME, DISPOSITION))
