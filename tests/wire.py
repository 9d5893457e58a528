"""Reading raw HTTP/1.1 answers off a test's own socket, and the fast path's outcome counters around them."""

from __future__ import annotations

import asyncio

import pytest

from edgecache.core.keepalive import KeepAlive
from edgecache.proxy import encode
from edgecache.proxy.cork import Cork
from edgecache.proxy.fastpath import FastPath
from edgecache.proxy.fastserver import FastServer
from tests.samples import sample_value


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """One answer with a Content-Length body (none: empty): its status, its fields by lower-case name, its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
    return int(head.split(b" ", 2)[1]), fields, body


async def exchange(port: int, data: bytes, source: str = "127.0.0.1", seconds: float = 20) -> bytes:
    """Send `data` on a new connection to 127.0.0.1:`port` from the loopback address `source`, and read until the
    server closes it (`seconds` at most)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(data)
        async with asyncio.timeout(seconds):
            return await reader.read(-1)
    finally:
        writer.close()


async def answered_while_draining(
    port: int, fast: FastServer | None, request: bytes, asked: asyncio.Event, release: asyncio.Event
) -> bytes:
    """Everything the node sends back for `request` when its connections start draining (FastServer's
    close_when_idle) once its upstream has the request's fill or forward (`asked`), which `release` then lets
    answer: the answer, then the close."""
    assert fast is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await asyncio.wait_for(asked.wait(), 10)
        for conn in list(fast.connections):
            conn.close_when_idle()
        release.set()
        return await reader.read(-1)
    finally:
        writer.close()


def fast_path_outcomes() -> dict[str, float]:
    names = ("answered", "handed_off", "taken_back", "forwarded")
    return {n: sample_value("edgecache_fast_path_total", {"outcome": n}) or 0.0 for n in names}


def own_error(answer: bytes, status: int, reason: str) -> bytes:
    """The node's own error answer of `status` and `reason` before a close, as proxy.encode.error writes every one,
    with the Date `answer` has (b"" when it has none, so the comparison fails)."""
    date = next((line[6:] for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n") if line.startswith(b"Date: ")), b"")
    return encode.error(status, reason, date, KeepAlive.CLOSE)


def hold_parked(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The loop's turn ends without writing what is parked (proxy.cork.Parked): it stays parked until its
    connection is used. The event: something was parked."""
    event = asyncio.Event()
    park_for = Cork.park_for

    def parking(cork: Cork, conn: FastPath, data: list[bytes | memoryview]) -> None:
        park_for(cork, conn, data)
        if cork.parked:
            event.set()

    monkeypatch.setattr(Cork, "park_for", parking)
    monkeypatch.setattr(Cork, "release_parked", lambda cork: None)
    return event
