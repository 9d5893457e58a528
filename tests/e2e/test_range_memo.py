"""A single range's answer, cut from the whole object's (decide.Decider._ranged), is remembered for its head only
from the second time that head is asked: a player's ranges hardly repeat, and remembering each new one (then
dropping it at the memos' next turn) cost a quarter of deciding it. Every answer is the same bytes either way."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.core import ranges
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


# The Range line's value as sent; the status, Content-Range and body of its answer; and whether
# plain_bounds reads it (the cut, or the full parse after it): every value but the form players send
# (ranges.player_value), and one of that form whose bounds are none, which is judged as before.
VALUES: list[tuple[str, int, bytes, bytes, bool]] = [
    ("bytes=1000-70999", 206, b"bytes 1000-70999/262144", BODY[1000:71000], False),
    ("\t bytes=5-9 \t", 206, b"bytes 5-9/262144", BODY[5:10], False),  # blanks around it, which the value drops
    ("bytes=262000-", 206, b"bytes 262000-262143/262144", BODY[262000:], False),  # to the end
    ("bytes=262000-99999999", 206, b"bytes 262000-262143/262144", BODY[262000:], False),  # clamped
    ("bytes=-100", 206, b"bytes 262044-262143/262144", BODY[-100:], True),  # a suffix: resolve()
    ("bytes=20-10", 200, b"", BODY, True),  # invalid: ignored, the whole object
    ("bytes=0-1234567890123456789", 200, b"", BODY, True),  # 19 digits: ignored too
    ("bytes=262144-262200", 416, b"bytes */262144", b"range not satisfiable\n", True),  # past the end
]


async def test_a_players_range_is_read_at_once_and_answered_as_before(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The form players send (bytes=A-B, blanks around it) is read by one match (ranges.player_value), not
    decoded and read again by plain_bounds; every other value still is. The answers are the origin's bytes, from
    one fetch."""
    origin.put("/v", BODY)
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=True)
    read: list[str] = []
    plain_bounds = ranges.plain_bounds

    def reading(value: str, length: int) -> tuple[int, int] | None:
        read.append(value)
        return plain_bounds(value, length)

    monkeypatch.setattr(ranges, "plain_bounds", reading)
    async with start_edge(config) as edge:
        assert (await edge.get("/v"))[2] == BODY
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            for value, status, content_range, body, _ in VALUES:
                writer.write(f"GET /v HTTP/1.1\r\nHost: video.test\r\nRange:{value}\r\n\r\n".encode())
                got, fields, data = await read_answer(reader)
                assert (got, fields.get(b"content-range", b"")) == (status, content_range)
                assert data == body
        finally:
            writer.close()
        assert {value.strip(" \t") for value, *_, again in VALUES if again} == set(read)  # by the cut or the full parse
        assert origin.hits["/v"] == 1
