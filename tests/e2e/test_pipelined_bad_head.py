"""Requests pipelined in one read before a head aiohttp's parser refuses are answered, whole, before its 400.

With the fast path off, aiohttp's parser refused the whole read for the malformed head and dropped the requests it
had parsed from it: the client got the 400 alone, never the answer to the valid request before it (pipelining is
legal, RFC 9112 9.3.2). proxy.headguard now feeds aiohttp each request of a read apart.
"""

from __future__ import annotations

import pytest
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE

from tests.conftest import Edge
from tests.e2e.test_no_hand_offs import parse_error
from tests.origin import Origin
from tests.wire import exchange

BODY = bytes(range(256)) * 40
HOST = b"Host: video.test\r\n"
BAD_FIELD = (b"GET /x HTTP/1.1\r\nHo st: x\r\n\r\n", "malformed request\n")
BAD_TARGET = (
    b"GET * HTTP/1.1\r\n" + HOST + b"\r\n",
    "invalid request target: an absolute path, an absolute URL, or * for OPTIONS only\n",
)


def get(path: str) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\n" + HOST + b"\r\n"


def answers(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The 200s at the front of `raw` (status line, body), and what follows them."""
    got = []
    while raw.startswith(b"HTTP/1.1 200 "):
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length: "))[16:])
        got.append((head.split(b"\r\n")[0], rest[:length]))
        raw = rest[length:]
    return got, raw


@pytest.mark.parametrize("bad", [BAD_FIELD, BAD_TARGET], ids=["field", "target"])
async def test_the_answers_before_a_malformed_head_come_whole_then_its_400(
    edge: Edge, origin: Origin, bad: tuple[bytes, str]
) -> None:
    head, reason = bad
    origin.put("/hit", BODY)
    assert (await edge.get("/hit"))[0] == 200
    for run in range(2):
        cold = f"/cold-{run}"
        origin.put(cold, BODY[:1000])
        cases = [
            ([get("/hit")], [BODY]),
            ([get(cold)], [BODY[:1000]]),  # a miss: answered after the origin's answer, still before the 400
            ([get("/hit"), get("/hit")], [BODY, BODY]),
        ]
        for before, bodies in cases:
            # Anything after the malformed head is never read: its 400 closes the connection.
            raw = await exchange(edge.port, b"".join(before) + head + get("/hit"))
            got, rest = answers(raw)
            assert got == [(b"HTTP/1.1 200 OK", body) for body in bodies], (run, before, raw[-300:])
            assert rest == parse_error(rest, reason), (run, before)
    assert origin.hits["/hit"] == 1
    assert (origin.hits["/cold-0"], origin.hits["/cold-1"]) == (1, 1)


async def test_as_many_requests_in_one_read_as_aiohttp_queues_then_a_malformed_head(edge: Edge, origin: Origin) -> None:
    """32 requests (aiohttp queues 32 from one read, and is fed no more pieces) then a malformed head: every one
    answered, in order, then the 400."""
    origin.put("/hit", BODY[:100])
    assert (await edge.get("/hit"))[0] == 200
    for _ in range(2):
        raw = await exchange(edge.port, get("/hit") * MAX_MSG_QUEUE_SIZE + BAD_FIELD[0])
        got, rest = answers(raw)
        assert got == [(b"HTTP/1.1 200 OK", BODY[:100])] * MAX_MSG_QUEUE_SIZE
        assert rest == parse_error(rest, BAD_FIELD[1])
    assert origin.hits["/hit"] == 1
