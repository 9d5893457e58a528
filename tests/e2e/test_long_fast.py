"""An answer of more slices than the fast path holds before its head (heldslices.HELD) is streamed on the fast path:
its first slices are held, the rest found as the body reaches them (memory, disk, or fetched when gone), and a
slice missing when the request comes makes the head say fwd=partial. No such GET or HEAD goes to aiohttp, and
bytes, heads (but Age and Date) and origin requests are those of the full handler."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.core.entry import ObjectMeta
from edgecache.core.hop import Hop, sign
from edgecache.proxy.heldslices import HELD
from edgecache.storage.store import SliceFile
from tests.conftest import CLUSTER_KEY, Edge, make_config, start_edge
from tests.e2e import test_hops as hops
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


async def test_a_connection_closed_while_a_later_slice_opens_never_has_its_bytes_sent_elsewhere(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sendfile writes to the socket's number, not through the transport: a connection closed (a write timeout, a
    client's reset, a drain) while a slice past the held ones is opened off the loop must not have the rest sent
    to that number, which the kernel gives to the next connection accepted. New connections get only their own
    answers."""
    size = 64 * 1024
    data = DATA[: (HELD + 4) * size - 100]
    origin.put("/long.bin", data)
    config = make_config(tmp_path / "c", [origin.url], memory_bytes=0, slice_bytes=size)
    config = replace(config, fast_path=True, disk_send="sendfile")
    async with start_edge(config) as edge, asyncio.timeout(30):
        assert edge.fast is not None
        assert (await edge.get("/long.bin"))[2] == data  # every slice on disk only (no memory tier)
        await edge.node.engine.flush()
        store, handler, fast = edge.node.engine.store, edge.node.shared, edge.fast
        opening, release = asyncio.Event(), asyncio.Event()
        real = store.open_slice

        async def held_open(entry_key: str, meta: ObjectMeta, index: int) -> SliceFile | bytes | None:
            if index == HELD:
                opening.set()
                await release.wait()
            return await real(entry_key, meta, index)

        monkeypatch.setattr(store, "open_slice", held_open)
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(request())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")
        assert await reader.readexactly(HELD * size) == data[: HELD * size]
        await opening.wait()
        (conn,) = [c for c in fast.connections if c.busy]  # the warm-up's idle keep-alive connection is not
        conn.abort()  # its socket is closed at once: its number is free
        while conn in fast.connections:  # noqa: ASYNC110 (connection_lost comes later, with no event to wait on)
            await asyncio.sleep(0.01)
        idle = len(fast.connections)
        others = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in range(4)]
        while len(fast.connections) < idle + len(others):  # noqa: ASYNC110 (accepted: their numbers are taken)
            await asyncio.sleep(0.01)
        release.set()
        while handler.in_flight:  # noqa: ASYNC110 (the streaming task's end has no event to wait on)
            await asyncio.sleep(0.01)
        writer.close()
        for other_reader, other_writer in others:
            other_writer.write(request(f"0-{size - 1}"))
            assert (await other_reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 206 Partial Content\r\n")
            assert await other_reader.readexactly(size) == data[:size]
            other_writer.close()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_lookaside_for_a_long_object_missing_a_later_slice_is_not_held(tmp_path: Path, fast: bool) -> None:
    """A look-aside asks what the node holds fresh and whole, and never fills: a long object one of whose slices
    past the held ones is gone is answered 504 (not held), its origin not asked, as the full handler answers it."""
    path = "/long.bin"
    async with hops.origins() as origs, hops.cluster(origs, tmp_path, {}, fast_path=fast) as nodes:
        for o in origs:
            o.put(path, DATA)
        index = hops.owner_index(path)
        node, origin = nodes[index], origs[index]
        assert (await hops.request(node, path))[::2] == (200, DATA)
        await node.node.engine.flush()
        store = node.node.engine.store
        gone: list[str] = []
        late = HELD + 1
        store.memory.delete_where(lambda k: k.startswith("s:") and k.endswith(f":{late}") and not gone.append(k))
        for name in gone:
            await store.disk.delete(name)
        asker = f"node{(index + 1) % 3 + 1}"
        stamp = Hop(asker, int(time.time()), "t-1", "127.0.0.1", False, lookaside=True)
        field = sign(CLUSTER_KEY, stamp, "GET", hops.primary(path))
        hits = origin.hits[path]
        assert (await hops.request(node, path, hops=(field,)))[0] == 504
        assert origin.hits[path] == hits
        assert (await hops.request(node, path))[::2] == (200, DATA)  # a viewer's request fills it, once
        assert origin.hits[path] == hits + 1
