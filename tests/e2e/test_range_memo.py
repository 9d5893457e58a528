"""A single range's answer, cut from the whole object's (decide.Decider._ranged), is remembered for its head only
from the second time that head is asked: a player's ranges hardly repeat, and remembering each new one (then
dropping it at the memos' next turn) cost a quarter of deciding it. Every answer is the same bytes either way."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.wire import read_answer

BODY = bytes(range(256)) * 1024  # 256 KiB


def _head(first: int, last: int) -> bytes:
    return f"GET /v HTTP/1.1\r\nHost: video.test\r\nRange: bytes={first}-{last}\r\n\r\n".encode()


async def test_a_range_is_remembered_from_its_second_time_and_answered_the_same(origin: Origin, tmp_path: Path) -> None:
    origin.put("/v", BODY)
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=True)
    async with start_edge(config) as edge:
        assert edge.fast is not None
        cuts = edge.fast.decider.cuts
        assert (await edge.get("/v"))[2] == BODY
        asked, other = _head(1000, 70999), _head(5, 9)
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            remembered = []
            answers = []
            for head in (asked, other, asked, asked, other):
                writer.write(head)
                status, fields, body = await read_answer(reader)
                answers.append((status, fields[b"content-range"], body))
                remembered.append((cuts.get(asked) is not None, cuts.get(other) is not None))
        finally:
            writer.close()
        assert remembered == [(False, False), (False, False), (True, False), (True, False), (True, True)]
        one = (206, b"bytes 1000-70999/262144", BODY[1000:71000])
        two = (206, b"bytes 5-9/262144", BODY[5:10])
        assert answers == [one, two, one, one, two]
        assert origin.hits["/v"] == 1
