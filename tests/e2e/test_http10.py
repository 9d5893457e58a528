"""HTTP/1.0 clients on the fast path (core.keepalive): answered there, never handed to aiohttp, each answer framed
for the version: its status line, `Connection: keep-alive` when the client asked for it, and a body of unknown
length sent as it comes and ended by closing the connection, as an HTTP/1.0 client knows no chunked coding.

tests/e2e/test_fast_path.py holds HTTP/1.0 hits, refusals and ranges to aiohttp's bytes; these are the answers
aiohttp cannot write for HTTP/1.0 (it refuses to chunk them) and the connection's end.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.e2e.test_pass_fast import chunked
from tests.origin import Obj, Origin
from tests.wire import exchange, fast_path_outcomes

BODY = bytes(range(256)) * 40
STREAMED = b"first second third\n"
_VOLATILE = re.compile(rb"\r\n(Age|Date): [^\r]*")


def ask(path: str, *fields: str, version: str = "HTTP/1.0") -> bytes:
    lines = [f"GET {path} {version}", "Host: video.test", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def logged(edge_log: Path) -> list[tuple[str, str, int, int, str]]:
    lines = [json.loads(x) for x in edge_log.read_bytes().splitlines()]
    return [(x["path"], x["cache"], x["status"], x["bytes"], x["protocol"]) for x in lines]


async def test_an_http10_request_without_keep_alive_is_answered_then_closed(origin: Origin, tmp_path: Path) -> None:
    """A miss, then a hit, then a pass-through: each the HTTP/1.1 answer with the HTTP/1.0 status line and no
    Connection field, and the request pipelined after it is never read (RFC 9112 9.6)."""
    origin.put("/v", BODY)
    config = replace(make_config(tmp_path / "c", [origin.url]), access_log=tmp_path / "access.log")
    before = fast_path_outcomes()
    async with start_edge(config) as edge:
        got = []
        for fields in ((), (), ("Cache-Control: no-store",)):
            got.append(await exchange(edge.port, ask("/v", *fields) + ask("/v", version="HTTP/1.1")))
        as11 = await exchange(edge.port, ask("/v", "Connection: close", version="HTTP/1.1"))
    after = fast_path_outcomes()
    assert origin.hits["/v"] == 2  # the miss and the pass-through; the next request on each connection never
    hit = _VOLATILE.sub(rb"\r\n\1: -", got[1])
    expected = _VOLATILE.sub(rb"\r\n\1: -", as11).replace(b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n")
    assert hit == expected.replace(b"Connection: close\r\n", b"")
    assert hit.endswith(b"\r\n\r\n" + BODY)
    for raw, status in zip(got, (b"miss", b"hit", b"fwd=bypass"), strict=True):
        assert raw.startswith(b"HTTP/1.0 200 OK\r\n")
        assert raw.count(b"HTTP/1.") == 1  # one answer, then the close
        assert b"\r\nConnection:" not in raw
        assert f"\r\nContent-Length: {len(BODY)}\r\n".encode() in raw
        assert status in raw.split(b"\r\nCache-Status: ", 1)[1].split(b"\r\n", 1)[0]
        assert raw.endswith(BODY)
    assert {k: after[k] - before[k] for k in after} == {
        "answered": 4, "handed_off": 0, "taken_back": 0, "forwarded": 0
    }  # fmt: skip
    assert logged(tmp_path / "access.log") == [
        ("/v", "miss", 200, len(BODY), "HTTP/1.0"),
        ("/v", "hit", 200, len(BODY), "HTTP/1.0"),
        ("/v", "pass", 200, len(BODY), "HTTP/1.0"),
        ("/v", "hit", 200, len(BODY), "HTTP/1.1"),
    ]


async def test_an_answer_of_unknown_length_ends_with_the_connection(origin: Origin, tmp_path: Path) -> None:
    """The origin's chunked answer, streamed to an HTTP/1.0 client that asked for keep-alive, as a miss and as a
    pass-through, twice each: the body as it came, no Transfer-Encoding, no keep-alive promised, then the close.
    The miss is stored: asked again, it is a hit of known length, and its connection stays open."""
    for path in ("/chunked-pass", "/chunked-miss1", "/chunked-miss2"):
        origin.put(path, b"")
    origin.on_request = chunked
    config = replace(make_config(tmp_path / "c", [origin.url]), access_log=tmp_path / "access.log")
    keep = "Connection: keep-alive"
    before = fast_path_outcomes()
    async with start_edge(config) as edge:
        answers = []
        for n in (1, 2):
            for path, fields in (("/chunked-pass", ("Cache-Control: no-store",)), (f"/chunked-miss{n}", ())):
                answers.append(await exchange(edge.port, ask(path, keep, *fields) + ask(path, keep)))
        hits = await exchange(edge.port, ask("/chunked-miss1", keep) + ask("/chunked-miss1"))
    after = fast_path_outcomes()
    for raw in answers:
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"\r\nTransfer-Encoding:" not in head
        assert b"\r\nContent-Length:" not in head
        assert b"\r\nConnection:" not in head  # the close ends the body: no keep-alive
        assert body == STREAMED
    heads = re.findall(rb"HTTP/1\.0 200 OK\r\n(?:[^\r]+\r\n)*\r\n", hits)
    assert len(heads) == 2
    assert [b"\r\nConnection: keep-alive\r\n" in h for h in heads] == [True, False]
    assert all(f"\r\nContent-Length: {len(STREAMED)}\r\n".encode() in h for h in heads)
    assert hits == b"".join(h + STREAMED for h in heads)
    assert origin.hits == {"/chunked-pass": 2, "/chunked-miss1": 1, "/chunked-miss2": 1}
    assert {k: after[k] - before[k] for k in after} == {
        "answered": 6, "handed_off": 0, "taken_back": 0, "forwarded": 0
    }  # fmt: skip
    assert [line[:2] for line in logged(tmp_path / "access.log")] == [
        ("/chunked-pass", "pass"), ("/chunked-miss1", "miss"), ("/chunked-pass", "pass"), ("/chunked-miss2", "miss"),
        ("/chunked-miss1", "hit"), ("/chunked-miss1", "hit"),
    ]  # fmt: skip
    assert {line[2:] for line in logged(tmp_path / "access.log")} == {(200, len(STREAMED), "HTTP/1.0")}


async def test_http10_keep_alive_carries_a_connection_through_hits_and_misses(origin: Origin, tmp_path: Path) -> None:
    """An HTTP/1.0 client that asks for keep-alive on every request keeps its connection through a miss, a hit, a
    pass-through and a refusal, each answer saying `Connection: keep-alive`; one without it closes the connection."""
    origin.put("/v", BODY)
    config = make_config(tmp_path / "c", [origin.url])
    keep = "Connection: keep-alive"
    before = fast_path_outcomes()
    async with start_edge(config) as edge:
        for _ in range(2):
            raw = await exchange(
                edge.port,
                ask("/v", keep)
                + ask("/v", keep, "Range: bytes=1-4")
                + ask("/v", keep, "Authorization: Bearer a")
                + ask("/v", keep).replace(b"Host: video.test", b"Host: nowhere.test")
                + ask("/v")
                + ask("/v", keep),
            )
            heads = re.findall(rb"HTTP/1\.[01] \d{3} [^\r]*\r\n(?:[^\r]+\r\n)*\r\n", raw)
            assert [h.split(b"\r\n", 1)[0] for h in heads] == [
                b"HTTP/1.0 200 OK", b"HTTP/1.0 206 Partial Content", b"HTTP/1.0 200 OK",
                b"HTTP/1.0 421 Misdirected Request", b"HTTP/1.0 200 OK",
            ]  # fmt: skip
            assert [b"\r\nConnection: keep-alive\r\n" in h for h in heads] == [True] * 4 + [False]
            assert raw.endswith(BODY)
    after = fast_path_outcomes()
    assert origin.hits["/v"] == 3  # the first miss, and the pass-through each time
    assert {k: after[k] - before[k] for k in after} == {
        "answered": 10, "handed_off": 0, "taken_back": 0, "forwarded": 0
    }  # fmt: skip


async def test_the_full_handler_frames_an_answer_of_unknown_length_for_http10_too(
    origin: Origin, tmp_path: Path
) -> None:
    """With the fast path off (and for what is still handed to aiohttp), a streamed miss and a pass-through of the
    origin's chunked answer reach an HTTP/1.0 client as the fast path sends them: no chunks, ended by the close. They
    were 500s: aiohttp refuses to chunk for HTTP/1.0. A review's probe."""
    for path in ("/chunked-pass", "/chunked-miss1", "/chunked-miss2"):
        origin.put(path, b"")
    origin.on_request = chunked
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=False)
    async with start_edge(config) as edge:
        for n in (1, 2):  # a miss of another object each time: the first is stored, then a hit of known length
            for path, fields in (("/chunked-pass", ("Cache-Control: no-store",)), (f"/chunked-miss{n}", ())):
                raw = await exchange(edge.port, ask(path, "Connection: keep-alive", *fields))
                head, _, body = raw.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.0 200 OK\r\n")
                assert b"\r\nTransfer-Encoding:" not in head
                assert b"\r\nConnection:" not in head
                assert body == STREAMED


async def test_a_head_of_unknown_length_keeps_an_http10_connection_on_both_paths(
    origin: Origin, tmp_path: Path
) -> None:
    """A HEAD miss whose answer's length is not known: the head alone, with no body to end by the close, so the
    keep-alive the client asked for holds and the request after it is answered; the fast path (which answers it,
    not aiohttp) and the full handler alike. The full handler closed the connection after it."""
    origin.put("/chunked-head", b"")
    origin.put("/after", BODY)
    origin.on_request = chunked
    raws = []
    for fast in (True, False):
        config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast)
        async with start_edge(config) as edge:
            before = fast_path_outcomes()
            head = ask("/chunked-head", "Connection: keep-alive").replace(b"GET ", b"HEAD ", 1)
            raws.append(_VOLATILE.sub(b"", await exchange(edge.port, head + ask("/after"))))
            after = fast_path_outcomes()
        assert after["handed_off"] == before["handed_off"]
    assert raws[0] == raws[1]
    first, second = re.findall(rb"HTTP/1\.0 200 OK\r\n(?:[^\r]+\r\n)*\r\n", raws[0])
    assert b"\r\nConnection: keep-alive\r\n" in first
    assert b"\r\nContent-Length:" not in first
    assert b"\r\nTransfer-Encoding:" not in first
    assert raws[0] == first + second + BODY
    assert origin.hits == {"/chunked-head": 2, "/after": 2}


async def test_a_204_keeps_an_http10_connection_on_both_paths(origin: Origin, tmp_path: Path) -> None:
    """A GET miss answered 204 (no body, so no length to know: streamed as uncached), for an HTTP/1.0 client that
    asked for keep-alive: the head alone, `Connection: keep-alive`, and the request after it answered, on the fast
    path and the full handler alike. The full handler framed it as a body of unknown length (ended by the close)
    and closed the connection after it. Found by a differential fuzzer of the two paths."""
    origin.put("/after", BODY)

    def empty(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse | None:
        return web.Response(status=204, headers={"Cache-Control": "no-store"}) if request.path == "/none" else None

    origin.on_request = empty
    raws = []
    for fast in (True, False):
        config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast)
        async with start_edge(config) as edge:
            raws.append(
                _VOLATILE.sub(b"", await exchange(edge.port, ask("/none", "Connection: keep-alive") + ask("/after")))
            )
    assert raws[0] == raws[1]
    first, second = re.findall(rb"HTTP/1\.0 [0-9]{3} [A-Za-z ]+\r\n(?:[^\r]+\r\n)*\r\n", raws[0])
    assert first.startswith(b"HTTP/1.0 204 No Content\r\n")
    assert b"\r\nConnection: keep-alive\r\n" in first
    assert second.startswith(b"HTTP/1.0 200 OK\r\n")
    assert raws[0] == first + second + BODY
    assert origin.hits == {"/none": 2, "/after": 2}
