"""A large answer from memory is written as the loop's turn ends (proxy.cork.Parked), once the heads of every
connection the poll found readable are decided. Whatever uses its connection before that writes it first: the next
head, a half-close, the idle timeout, a drain. Each is made to come first here by holding the turn's end back (the
Cork's release_parked not run): the answers still come whole and in order, then the close, twice each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.proxy.cork import Cork, Parked
from edgecache.proxy.fastpath import FastPath
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin
from tests.wire import hold_parked, read_answer

BODY = bytes((i * 7 + i // 251) % 256 for i in range(3 * 2**20 + 5))  # four 1 MiB slices, the last 5 bytes
A, B = (0, 2**20 - 1), (2**20 - 100, 2**20 + 65_535)  # one slice; across two (both over Cork.PARK_BYTES)
SMALL = (3 * 2**20 - 7, 3 * 2**20 + 4)  # 12 bytes: written at once
RELEASE_PARKED = Cork.release_parked  # as the turn's end runs it (the `parked` fixture holds it back)


def get(rng: tuple[int, int], close: bool = False) -> bytes:
    fields = [f"Range: bytes={rng[0]}-{rng[1]}", *(["Connection: close"] if close else [])]
    return ("\r\n".join(["GET /v HTTP/1.1", "Host: video.test", *fields]) + "\r\n\r\n").encode()


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each answer in `raw`, which must hold whole answers and nothing else."""
    out = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"a head without its end: {head[:200]!r}"
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        n = int(fields[b"Content-Length"])
        assert len(raw) >= n, "a body cut short"
        out.append((int(head.split(b" ")[1]), raw[:n]))
        raw = raw[n:]
    return out


def part(rng: tuple[int, int]) -> tuple[int, bytes]:
    return 206, BODY[rng[0] : rng[1] + 1]


async def ask_in_turn(
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    ranges: tuple[tuple[int, int], ...],
    done: asyncio.Event,
) -> None:
    """Each connection asks for its range, in turn, once `done` (cleared first) says the one before was decided."""
    for (_, writer), rng in zip(conns, ranges, strict=True):
        done.clear()
        writer.write(get(rng))
        await asyncio.wait_for(done.wait(), 10)


@pytest.fixture
async def edge(origin: Origin, tmp_path: Path) -> AsyncIterator[Edge]:
    origin.put("/v", BODY)
    config = replace(make_config(tmp_path / "cache", [origin.url]), idle_timeout=1.0)
    async with start_edge(config) as e:
        assert (await e.get("/v"))[::2] == (200, BODY)  # every slice in the memory tier
        yield e


@pytest.fixture
def parked(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    return hold_parked(monkeypatch)


async def test_the_next_heads_write_the_parked_answer_before_theirs(edge: Edge, parked: asyncio.Event) -> None:
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            for rng in (A, B):
                parked.clear()
                writer.write(get(rng))
                await asyncio.wait_for(parked.wait(), 10)
            writer.write(get(SMALL, close=True))
            async with asyncio.timeout(10):
                raw = await reader.read(-1)
        finally:
            writer.close()
        assert answers(raw) == [part(A), part(B), part(SMALL)]
    assert edge.fast is not None
    assert all(p.data == [] for p in edge.fast.cork.parked)  # each written once, by what used its connection


@pytest.mark.parametrize("close", ["half-close", "drain"])
async def test_what_closes_the_connection_writes_the_parked_answer_first(
    edge: Edge, parked: asyncio.Event, close: str
) -> None:
    """The client's half-close (FastPath.eof_received), or the node's drain (close_when_idle)."""
    assert edge.fast is not None
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            parked.clear()
            writer.write(get(B))
            await asyncio.wait_for(parked.wait(), 10)
            if close == "half-close":
                writer.write_eof()
            for conn in list(edge.fast.connections) if close == "drain" else []:
                conn.close_when_idle()
            async with asyncio.timeout(10):
                raw = await reader.read(-1)
        finally:
            writer.close()
        assert answers(raw) == [part(B)]


async def test_the_idle_timeout_writes_the_parked_answer_before_the_close(edge: Edge, parked: asyncio.Event) -> None:
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(get(A))
            async with asyncio.timeout(10):  # idle_timeout 1 s
                raw = await reader.read(-1)
        finally:
            writer.close()
        assert parked.is_set()  # it was parked, and written by the timer's close
        parked.clear()
        assert answers(raw) == [part(A)]


async def test_a_client_gone_before_the_turn_ends_is_written_nothing(
    edge: Edge, parked: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert edge.fast is not None
    cork, lost = edge.fast.cork, asyncio.Event()
    connection_lost = FastPath.connection_lost

    def losing(conn: FastPath, exc: Exception | None) -> None:
        connection_lost(conn, exc)
        lost.set()

    monkeypatch.setattr(FastPath, "connection_lost", losing)
    for _ in range(2):
        _, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        parked.clear()
        lost.clear()
        writer.write(get(A))
        await asyncio.wait_for(parked.wait(), 10)
        writer.transport.abort()
        await asyncio.wait_for(lost.wait(), 10)
        cork.parked, [left] = [], cork.parked
        assert left.release() is left.real  # nothing to write to, and no error
        assert left.data == []
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)  # the node answers the next
        try:
            writer.write(get(SMALL))
            status, _, body = await asyncio.wait_for(read_answer(reader), 10)
            assert (status, body) == part(SMALL)
        finally:
            writer.close()


async def test_the_answers_of_one_poll_come_whole_on_every_connection(edge: Edge, origin: Origin) -> None:
    """Not held back: sixteen connections' heads read in one poll are answered exactly, twice on each."""
    hits = origin.hits.get("/v", 0)
    ranges = [(i * 196_613 % (len(BODY) - 2**20), i * 196_613 % (len(BODY) - 2**20) + 2**20 - 1) for i in range(16)]
    conns = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in ranges]
    try:
        for _ in range(2):
            for (_, writer), rng in zip(conns, ranges, strict=True):
                writer.write(get(rng))
            for (reader, _), rng in zip(conns, ranges, strict=True):
                status, _, body = await asyncio.wait_for(read_answer(reader), 10)
                assert (status, body) == part(rng)
    finally:
        for _, writer in conns:
            writer.close()
    assert origin.hits.get("/v", 0) == hits


@pytest.fixture
async def disk_edge(origin: Origin, tmp_path: Path) -> AsyncIterator[Edge]:
    origin.put("/v", BODY)
    async with start_edge(make_config(tmp_path / "cache", [origin.url], memory_bytes=0)) as e:
        assert (await e.get("/v"))[::2] == (200, BODY)
        await e.node.engine.flush()  # every slice on disk, its pages cached: read at once (diskhit._read_now)
        yield e


async def test_a_disk_hit_read_at_once_keeps_its_buffer_until_written(
    disk_edge: Edge, parked: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk hit read at once is read into one of the worker's pooled buffers, given back once the socket took
    it (diskhit.answer): such an answer is written at once, never parked, or the next connection's disk hit of the
    same turn would read into the buffer of an answer not written yet."""
    answered, sent = asyncio.Event(), FastPath.sent

    def counted(conn: FastPath, *args: object) -> None:
        sent(conn, *args)  # type: ignore[arg-type]
        answered.set()

    monkeypatch.setattr(FastPath, "sent", counted)
    first, second = (100, 100_099), (2 * 2**20 + 5, 2 * 2**20 + 200_004)
    for rng in (first, second):  # its slice file opened: the next is read at once
        assert (await disk_edge.get("/v", Range=f"bytes={rng[0]}-{rng[1]}"))[::2] == part(rng)
    for _ in range(2):
        conns = [await asyncio.open_connection("127.0.0.1", disk_edge.port) for _ in range(2)]
        try:
            await ask_in_turn(conns, (first, second), answered)
            for (reader, writer), rng in zip(conns, (first, second), strict=True):
                writer.write_eof()
                async with asyncio.timeout(10):
                    assert answers(await reader.read(-1)) == [part(rng)]
        finally:
            for _, writer in conns:
                writer.close()


async def test_a_parked_answer_that_fails_to_be_written_cuts_only_its_connection(
    edge: Edge, parked: asyncio.Event, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert edge.fast is not None
    cork, release = edge.fast.cork, Parked.release
    for _ in range(2):
        conns = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in range(2)]
        try:
            await ask_in_turn(conns, (A, B), parked)
            broken = cork.parked[0]

            def failing(p: Parked, broken: Parked = broken) -> asyncio.Transport:
                if p is broken:
                    raise RuntimeError("a bug")
                return release(p)

            monkeypatch.setattr(Parked, "release", failing)
            RELEASE_PARKED(cork)  # the turn's end: the first fails, the second is written all the same
            monkeypatch.setattr(Parked, "release", release)
            async with asyncio.timeout(10):
                assert await conns[0][0].read(-1) == b""  # cut, nothing written
                status, _, body = await read_answer(conns[1][0])
            assert (status, body) == part(B)
        finally:
            for _, writer in conns:
                writer.close()
    assert caplog.text.count("writing a parked answer failed: its connection is cut") == 2
