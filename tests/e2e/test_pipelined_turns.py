"""A read full of pipelined heads is answered a bounded number of heads a loop turn (fastpath.HEADS_A_TURN): one
client's burst (a 256 KiB read holds thousands of small heads) answered in one callback held every other connection
of the worker for as long. Every answer still comes, exact and in order, twice in a row on one connection."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from edgecache.proxy import fastpath
from edgecache.proxy.cork import Cork
from edgecache.proxy.fastpath import FastPath
from tests.conftest import Edge
from tests.origin import Origin

BODY = bytes(range(256)) * 3 + b"end"
HEADS = 300  # far more than a turn's, and about 15 KiB: one read


@pytest.mark.parametrize("edge", ["fast"], indirect=True)
async def test_a_pipelined_burst_is_answered_a_bounded_number_of_heads_a_turn(
    edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin.put("/s", BODY)
    assert (await edge.get("/s"))[::2] == (200, BODY)
    turns: list[int] = []  # heads decided in each of the connection's turns
    around, decided = Cork.around, Cork.decided

    def counted_around(cork: Cork, conn: FastPath, answer_heads: Callable[[], None]) -> None:
        turns.append(0)
        around(cork, conn, answer_heads)

    def counted_decided(cork: Cork, conn: FastPath, prepared: object) -> None:
        turns[-1] += 1
        decided(cork, conn, prepared)  # type: ignore[arg-type]

    monkeypatch.setattr(Cork, "around", counted_around)
    monkeypatch.setattr(Cork, "decided", counted_decided)
    head = b"GET /s HTTP/1.1\r\nHost: video.test\r\nX-N: 1\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    for _ in range(2):
        writer.write(head * HEADS)
        answers = []
        for _ in range(HEADS):
            raw = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", raw)[1])  # type: ignore[index]
            answers.append((raw.split(b" ", 2)[1], await reader.readexactly(length)))
        assert answers == [(b"200", BODY)] * HEADS
    writer.close()
    await writer.wait_closed()
    assert sum(turns) == 2 * HEADS
    assert max(turns) == fastpath.HEADS_A_TURN
    assert origin.hits["/s"] == 1
