"""An answer of more slices than the fast path holds before its head (decide.HELD) is streamed on the fast path:
its first slices are held, the rest found as the body reaches them (memory, disk, or fetched when gone), and a
slice missing when the request comes makes the head say fwd=partial. No such GET or HEAD goes to aiohttp, and
bytes, heads (but Age and Date) and origin requests are those of the full handler."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.proxy.decide import HELD
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin
from tests.wire import fast_path_outcomes, read_answer

MiB = 2**20
SLICES = HELD + 4
DATA = random.Random(12).randbytes(SLICES * MiB - MiB // 2)  # the last slice half full


def request(rng: str = "", method: str = "GET") -> bytes:
    field = f"Range: bytes={rng}\r\n" if rng else ""
    return f"{method} /long.bin HTTP/1.1\r\nHost: video.test\r\n{field}\r\n".encode()


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rng: str = "") -> tuple[int, str, bytes]:
    writer.write(request(rng))
    status, fields, body = await read_answer(reader)
    return status, fields[b"cache-status"].decode(), body


@pytest.fixture(params=["fast", "framework"])
async def edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    origin.put("/long.bin", DATA)
    config = replace(make_config(tmp_path / "cache", [origin.url], memory_bytes=64 * MiB))
    async with start_edge(replace(config, fast_path=request.param == "fast")) as edge:
        yield edge


def handed(before: dict[str, float]) -> dict[str, float]:
    after = fast_path_outcomes()
    return {k: after[k] - before[k] for k in ("answered", "handed_off")}


async def test_a_long_hit_is_streamed_from_memory_and_disk(edge: Edge, origin: Origin) -> None:
    fast = edge.node.config.fast_path
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        async with asyncio.timeout(30):
            before = fast_path_outcomes()
            assert await ask(reader, writer) == (200, "edgecache; fwd=uri-miss; stored", DATA)
            for _ in range(2):
                assert await ask(reader, writer) == (200, "edgecache; hit", DATA)
                assert await ask(reader, writer, f"100-{SLICES * MiB - MiB}") == (
                    206,
                    "edgecache; hit",
                    DATA[100 : SLICES * MiB - MiB + 1],
                )
                writer.write(request(method="HEAD"))
                status, fields, body = await read_answer_head(reader)
                assert (status, fields[b"content-length"], body) == (200, str(len(DATA)).encode(), b"")
            await edge.node.engine.flush()
            edge.node.engine.store.memory.clear()  # every slice on disk only now
            for _ in range(2):
                assert await ask(reader, writer) == (200, "edgecache; hit", DATA)
            assert handed(before) == ({"answered": 9, "handed_off": 0} if fast else {"answered": 0, "handed_off": 0})
    finally:
        writer.close()
    assert origin.hits["/long.bin"] == 1  # the cold whole GET, fetched whole


async def read_answer_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """A HEAD's answer: its Content-Length has no body behind it."""
    head = await reader.readuntil(b"\r\n\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    return int(head.split(b" ", 2)[1]), fields, b""


async def test_slices_missing_past_the_held_ones_make_it_partial(edge: Edge, origin: Origin) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    late = HELD + 1  # a slice the answer does not hold before its head
    try:
        async with asyncio.timeout(30):
            first = await ask(reader, writer, f"0-{MiB - 1}")
            assert first == (206, "edgecache; fwd=uri-miss; stored", DATA[:MiB])
            got = await ask(reader, writer, f"{late * MiB}-{(late + 1) * MiB - 1}")
            assert got == (206, "edgecache; fwd=partial", DATA[late * MiB : (late + 1) * MiB])
            before = fast_path_outcomes()
            for expected in ("edgecache; fwd=partial", "edgecache; hit"):  # twice: then every slice is held
                assert await ask(reader, writer) == (200, expected, DATA)
            answered = 2 if edge.node.config.fast_path else 0
            assert handed(before) == {"answered": answered, "handed_off": 0}
    finally:
        writer.close()
    # Slice 0, then `late`; then the whole answer's runs (cache.fill_slices: 4) around what it held, each slice once.
    assert origin.range_hits("/long.bin") == [
        f"bytes=0-{MiB - 1}",
        f"bytes={late * MiB}-{(late + 1) * MiB - 1}",
        f"bytes={MiB}-{5 * MiB - 1}",
        f"bytes={5 * MiB}-{late * MiB - 1}",
        f"bytes={(late + 1) * MiB}-{SLICES * MiB - 1}",
    ]


async def test_a_slice_gone_while_the_body_streams_is_fetched(edge: Edge, origin: Origin) -> None:
    """The client reads nothing until the slice is gone: what the edge has sent by then fits in the sockets'
    buffers (kept small here), far less than the HELD slices before it."""
    store = edge.node.engine.store
    late = SLICES - 2
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", edge.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
    try:
        async with asyncio.timeout(30):
            assert (await ask(reader, writer))[2] == DATA
            await edge.node.engine.flush()
            hits, before = origin.hits["/long.bin"], fast_path_outcomes()
            writer.write(request())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nCache-Status: edgecache; hit\r\n" in head
            gone: list[str] = []
            store.memory.delete_where(lambda k: k.startswith("s:") and k.endswith(f":{late}") and not gone.append(k))
            assert len(gone) == 1
            await store.disk.delete(gone[0])
            assert await reader.readexactly(len(DATA)) == DATA
            assert await ask(reader, writer) == (200, "edgecache; hit", DATA)  # stored again by the fetch
            answered = 2 if edge.node.config.fast_path else 0
            assert handed(before) == {"answered": answered, "handed_off": 0}
    finally:
        writer.close()
    assert origin.hits["/long.bin"] == hits + 1
    assert origin.range_hits("/long.bin")[-1] == f"bytes={late * MiB}-{(late + 1) * MiB - 1}"
