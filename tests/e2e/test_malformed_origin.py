"""An origin answer aiohttp's client cannot parse is a 502 that names the problem, counted as kind `malformed`
(proxy.nohead): over 128 fields, a line over 8 KiB, a space before a field's colon, a status line that is not one.
Before, it said "no answer (ClientResponseError)" and counted as `connect`, a network fault. On both paths, for a
miss and for a pass-through; a well-formed answer from the same origin is served as before."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_fast_path import get
from tests.e2e.test_no_hand_offs import both_paths
from tests.origin import RawOrigin, RawReply, RawRequest
from tests.samples import sample_value
from tests.wire import exchange, own_error

BODY = b"0123456789"
HEADS = {
    "/many": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-F%d: %d\r\n" % (i, i) for i in range(130)),
    "/long": b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 9000 + b"\r\n",
    "/space": b"HTTP/1.1 200 OK\r\nX-Bad : 1\r\n",
    "/status": b"HTTP/1.1 2000 OK\r\n",
    "/fine": b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\n",
}
REASONS = {
    "/many": "Too many headers received",
    "/long": "Got more than 8190 bytes when reading",
    "/space": "Invalid header token",
    "/status": "Bad status line",
}
KINDS = ("malformed", "connect", "timeout", "failed")


def reply(request: RawRequest) -> RawReply:
    return HEADS[request.path] + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY, False


def errors() -> dict[str, float]:
    return {k: sample_value("edgecache_origin_errors_total", {"site": "videos", "kind": k}) or 0.0 for k in KINDS}


async def test_a_malformed_origin_answer_is_a_502_that_says_so(tmp_path: Path) -> None:
    origin = RawOrigin(reply)
    await origin.start()
    try:
        async with both_paths(origin, tmp_path) as edges:  # type: ignore[arg-type]
            for path, why in REASONS.items():
                miss, passed = get(path, "Connection: close"), get(path, "Cache-Control: no-store", "Connection: close")
                for asked in (miss, passed):
                    for edge in edges:
                        before = errors()
                        answer = await exchange(edge.port, asked)
                        reason = f"origin failed: site videos: answered malformed HTTP: {why}"
                        assert answer == own_error(answer, 502, reason), (edge.node.config.fast_path, answer[:400])
                        after = errors()
                        assert {k: after[k] - before[k] for k in KINDS} == {
                            "malformed": 1,
                            "connect": 0,
                            "timeout": 0,
                            "failed": 0,
                        }
                assert origin.hits[path] == 4  # each request asked once: a miss, a pass, on each path
            for edge in edges:
                answer = await exchange(edge.port, get("/fine", "Connection: close"))
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
                assert answer.endswith(b"\r\n\r\n" + BODY), answer
    finally:
        await origin.stop()


# Whitespace before the colon of a name aiohttp's parser knows: it took the field with its meaning and kept the space in
# its name, and the node sent it on beside its own framing, and stored it. Bodies that fit the spaced framing, so
# that only the space is wrong. (A tab there, or a space after any other name, aiohttp refuses itself: HEADS above.)
SPACED = {
    "/spaced-length": b"HTTP/1.1 200 OK\r\nContent-Length : 10\r\nCache-Control: max-age=600\r\n\r\n" + BODY,
    "/spaced-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\nCache-Control: max-age=600\r\n\r\n"
    + b"a\r\n"
    + BODY
    + b"\r\n0\r\n\r\n",
    "/spaced-connection": b"HTTP/1.1 200 OK\r\nConnection : keep-alive\r\nContent-Length: 10\r\n\r\n" + BODY,
}


async def test_whitespace_before_a_known_fields_colon_is_refused_as_any_others(tmp_path: Path) -> None:
    """RFC 9112 5.1: such whitespace must never reach the client. Before, `Content-Length : 10` went out beside the
    node's `Transfer-Encoding: chunked` (a miss) or `Content-Length: 10` (the hit it was stored for)."""
    origin = RawOrigin(lambda request: (SPACED[request.path], True))
    await origin.start()
    try:
        async with both_paths(origin, tmp_path) as edges:  # type: ignore[arg-type]
            for path in SPACED:
                for edge in edges:
                    for _ in range(2):  # never stored: the second asks the origin again
                        before = errors()
                        answer = await exchange(edge.port, get(path, "Connection: close"))
                        reason = "origin failed: site videos: answered malformed HTTP: Invalid header token"
                        assert answer == own_error(answer, 502, reason), (edge.node.config.fast_path, answer[:400])
                        after = errors()
                        assert {k: after[k] - before[k] for k in KINDS if after[k] != before[k]} == {"malformed": 1}
                assert origin.hits[path] == 4
    finally:
        await origin.stop()
