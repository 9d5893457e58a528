"""A forward's answer is bounded as aiohttp bounds a viewer's request and the full handler's client a peer's answer
(proxy.answerbound): a peer that is broken or hostile cannot hold a forward, its connection or memory with a head
of endless fields, a chunk-size line, chunk extensions or a trailer section that never end.

A real node beside a peer this test scripts (tests/e2e/test_relay). Past a bound before the head ends, the peer is
broken (marked down) and the next owner, the node itself, answers from the origin; past one after, the viewer's
connection is cut with its answer short of its last chunk, never taken for whole. Each is counted as the peer's
error, kind "malformed", and the peer's connection is closed. Before, each answer was relayed (its head's) or the
forward held until the read timeout (30 s here: past the test's bound).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from edgecache.proxy import answerbound
from tests.e2e.test_peer_metrics import deltas, peer_errors
from tests.e2e.test_relay import RING, Script, ScriptedPeer, answers, beside, exchange, owned_by, request
from tests.origin import Origin

OK_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n4\r\nwxyz\r\n"
MANY = b"".join(b"X-%d: 1\r\n" % i for i in range(answerbound.MAX_FIELDS + 1))

# Broken before the head ends: the node answers from the origin instead.
IN_HEAD = {
    "fields": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + MANY + b"\r\nok",
    "field": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + b"b" * answerbound.MAX_FIELD + b"\r\n\r\nok",
    "status": b"HTTP/1.1 200 " + b"O" * (answerbound.MAX_LINE + 1) + b"\r\nContent-Length: 2\r\n\r\nok",
    # 165 KB of interim answers and no answer, 33 of them per write: each read ends one (bounded with the head).
    "interims": [b"HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\n" * 33] * 150,
}
# Broken after: what follows the head and first chunk (OK_HEAD), shown to the viewer first.
ENDLESS = 2**20
AFTER_HEAD = {
    "zeros": b"0" * ENDLESS,  # a chunk-size line of leading zeros
    "extension": b"5;x=" + b"e" * ENDLESS,
    "trailer": b"0\r\nX-T: " + b"t" * ENDLESS,
    "trailers": b"0\r\n" + MANY + b"\r\n",
}


def script(head: bytes | list[bytes], after: bytes | None, shown: asyncio.Event) -> Script:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in [head] if isinstance(head, bytes) else head:
            writer.write(piece)
            await asyncio.sleep(0)  # a turn of the loop: the node reads each piece by itself
        if after is None:
            return
        await shown.wait()  # the viewer has the head and the first chunk
        writer.write(after)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the node closes its connection: nothing more is sent

    return answer


@pytest.mark.parametrize("name", list(IN_HEAD))
async def test_an_answer_head_past_a_bound_is_a_broken_peer_and_the_node_answers(
    origin: Origin, tmp_path: Path, name: str
) -> None:
    path = owned_by(RING, "node2", f"/{name}/")
    origin.put(path, b"from origin")
    async with (
        ScriptedPeer({path: script(IN_HEAD[name], None, asyncio.Event())}) as peer,
        beside(origin, tmp_path, peer, read_timeout=30.0) as edge,
    ):
        errors = peer_errors("node2")
        raw = await exchange(edge.port, request(path, close=True))
        assert answers(raw, ["GET"])[0][::2] == (200, b"from origin")
        assert not edge.node.cluster.is_up("node2")  # type: ignore[union-attr]
        assert deltas(errors, peer_errors("node2")) == {"malformed": 1}
        async with peer.changed, asyncio.timeout(10):
            await peer.changed.wait_for(lambda: peer.closed == 1)  # the node closed its connection to the peer
        assert (peer.connections, origin.hits[path]) == (1, 1)


@pytest.mark.parametrize("name", list(AFTER_HEAD))
async def test_an_answer_past_a_bound_after_its_head_cuts_the_viewer_and_the_peer_connection(
    origin: Origin, tmp_path: Path, name: str
) -> None:
    path = owned_by(RING, "node2", f"/{name}/")
    shown = asyncio.Event()
    async with (
        ScriptedPeer({path: script(OK_HEAD, AFTER_HEAD[name], shown)}) as peer,
        beside(origin, tmp_path, peer, read_timeout=30.0) as edge,
    ):
        errors = peer_errors("node2")
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(request(path, close=True))
            async with asyncio.timeout(10):
                got = await reader.readuntil(b"4\r\nwxyz\r\n")
                shown.set()
                with contextlib.suppress(ConnectionError):
                    got += await reader.read(-1)  # cut, before the read timeout (30 s)
        finally:
            writer.close()
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got.endswith(b"\r\n\r\n4\r\nwxyz\r\n")  # never the last chunk: the viewer knows it is short
        assert deltas(errors, peer_errors("node2")) == {"malformed": 1}
        async with peer.changed, asyncio.timeout(10):
            await peer.changed.wait_for(lambda: peer.closed == 1)  # the node closed its connection to the peer
        assert edge.node.cluster.is_up("node2")  # type: ignore[union-attr]  # it answered: not down
        assert origin.hits[path] == 0


async def test_an_answer_at_every_bound_is_relayed_whole(origin: Origin, tmp_path: Path) -> None:
    """The bounds are aiohttp's, not tighter: as many fields as it takes, one as long, a status line as long."""
    fields = b"Content-Length: 2\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(answerbound.MAX_FIELDS - 2))
    big = b"X-Big: " + b"b" * (answerbound.MAX_FIELD - len("X-Big")) + b"\r\n"  # name and value: MAX_FIELD
    reason = b"O" * answerbound.MAX_LINE
    path = owned_by(RING, "node2", "/atbound/")
    head = b"HTTP/1.1 200 " + reason + b"\r\n" + fields + big + b"\r\nok"
    async with (
        ScriptedPeer({path: script(head, None, asyncio.Event())}) as peer,
        beside(origin, tmp_path, peer) as edge,
    ):
        errors = peer_errors("node2")
        raw = await exchange(edge.port, request(path, close=True))
        status, got, body = answers(raw, ["GET"])[0]
        assert (status, body, got["x-big"], got[f"x-{answerbound.MAX_FIELDS - 3}"]) == (
            200,
            b"ok",
            big[7:-2].decode(),
            "1",
        )
        assert raw.startswith(b"HTTP/1.1 200 " + reason + b"\r\n")
        assert deltas(errors, peer_errors("node2")) == {}
        assert origin.hits[path] == 0
