"""A client that pipelines request heads and never reads the answers is held by TCP, not by the edge's memory.

The client below sends heads behind one large answer it does not read, as fast as the edge takes them, until
the kernel's buffers are full and nothing moves for a while. Before, the fast path went on reading while its
writes were paused, so the edge took in everything sent (a 40 MiB pipeline raised RSS by 56 MB); now it stops
reading, on the fast path and after a hand-off to aiohttp alike. Then the client reads everything: every answer
is exact, in order.
"""

from __future__ import annotations

import asyncio
import re
import select
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin

SMALL = bytes(range(256)) * 40  # 10 KiB
# More than the kernel buffers of both sockets hold (so the edge's writes of it really wait), and few enough
# slices for the fast path to hold them all before its head (heldslices.HELD).
BIG = bytes((i * 11 + i // 239) % 256 for i in range(256)) * (7 * 2**12) + b"tail"
HEAD = f"HEAD /small HTTP/1.1\r\nHost: video.test\r\nX-Pad: {'p' * 900}\r\n\r\n".encode()
OFFERED = 64 * 2**20  # what the client tries to send
# Socket buffers on both sides (the edge's receive buffer grows on its own, up to tcp_rmem's maximum) plus what
# the edge may hold: far below what it took in before (all of OFFERED).
ACCEPTED_AT_MOST = 8 * 2**20
QUIET = 2.0  # seconds the socket stays unwritable before the client takes the kernel's buffers to be full


def send_until_full(sock: socket.socket, data: bytes) -> int:
    """Send without blocking while the edge takes bytes; the count sent once nothing moved for QUIET seconds."""
    sock.setblocking(False)
    sent = 0
    while sent < len(data):
        _, writable, _ = select.select([], [sock], [], QUIET)
        if not writable:
            break
        try:
            sent += sock.send(data[sent : sent + 2**20])
        except BlockingIOError:
            continue
    sock.setblocking(True)
    return sent


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    parts = []
    while chunk := sock.recv(2**20):
        parts.append(chunk)
    return b"".join(parts)


def client(port: int, first: bytes) -> tuple[int, bytes]:
    """Pipeline `first` and then HEADs without reading; shut down the sending side; read every answer."""
    data = first + HEAD * ((OFFERED - len(first)) // len(HEAD))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.connect(("127.0.0.1", port))
        sent = send_until_full(sock, data)
        sock.shutdown(socket.SHUT_WR)  # a head cut short at the end is never answered; the rest are
        return sent, read_all(sock)


def normalised(raw: bytes) -> bytes:
    return re.sub(rb"\r\n(Age|Date): [^\r]*", rb"\r\n\1: -", raw)


@pytest.fixture
async def edge(origin: Origin, tmp_path: Path) -> AsyncIterator[Edge]:
    origin.put("/small", SMALL)
    origin.put("/big", BIG)
    origin.put("/big-miss", BIG)
    async with start_edge(replace(make_config(tmp_path / "cache", [origin.url]), fast_path=True)) as e:
        for path in ("/small", "/big"):
            assert (await e.get(path))[0] == 200
        yield e


@pytest.mark.parametrize("first", ["/big", "/big-miss"], ids=["fast-path", "handed-to-aiohttp"])
async def test_pipelined_heads_behind_an_unread_answer_are_not_read(edge: Edge, origin: Origin, first: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(HEAD)
    one = await reader.readuntil(b"\r\n\r\n")  # the answer every HEAD below must get (HEAD: no body)
    writer.close()
    first_head = f"GET {first} HTTP/1.1\r\nHost: video.test\r\n\r\n".encode()
    sent, raw = await asyncio.to_thread(client, edge.port, first_head)
    assert sent < ACCEPTED_AT_MOST, f"the edge took {sent} bytes of heads it could not answer"
    heads = (sent - len(first_head)) // len(HEAD)  # the whole heads it was sent
    assert heads > 100
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"\r\nContent-Length: {len(BIG)}\r\n".encode() in head + b"\r\n"
    assert rest[: len(BIG)] == BIG
    assert normalised(rest[len(BIG) :]) == normalised(one) * heads
    assert origin.hits[first] == 1
