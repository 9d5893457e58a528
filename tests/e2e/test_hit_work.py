"""The work a hit from memory costs the fast path, counted rather than timed (issue 14: server CPU per request).

A real node, a real origin and real keep-alive connections: each request's answer is checked byte for byte, and the
steps the fast path takes for it are counted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecache.proxy.cork import Cork
from tests.conftest import make_config, start_edge
from tests.origin import Origin

BODY = bytes((i * 13 + i // 253) % 256 for i in range(2 * 2**20 + 777))  # three slices of 1 MiB


def _count_head_searches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each search for a head in a connection's input: the size of the input searched."""
    searched: list[int] = []
    original = Cork.head_end

    def head_end(self: Cork, conn: object) -> int:
        searched.append(len(conn.buf))  # type: ignore[attr-defined]
        return original(self, conn)  # type: ignore[arg-type]

    monkeypatch.setattr(Cork, "head_end", head_end)
    return searched


async def test_a_lone_request_s_answer_looks_for_its_head_once(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keep-alive client's request, answered whole from memory, leaves nothing in the connection's input: the
    fast path does not search that empty input for another head (before: two searches a request, the second of
    nothing). Ranges across two slices and whole objects alike."""
    origin.put("/v.bin", BODY)
    async with start_edge(make_config(tmp_path / "cache", [origin.url])) as edge:
        for _ in range(2):  # the fill, then a hit
            assert (await edge.get("/v.bin"))[::2] == (200, BODY)
        searched = _count_head_searches(monkeypatch)
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        asked = [(0, len(BODY) - 1), (2**20 - 5, 2**20 + 9), (7, 2**20 - 1), (2**21 + 1, len(BODY) - 1)]
        heads = [f"GET /v.bin HTTP/1.1\r\nHost: video.test\r\nRange: bytes={a}-{b}\r\n\r\n".encode() for a, b in asked]
        try:
            for head, (first, last) in zip(heads, asked, strict=True):
                writer.write(head)
                async with asyncio.timeout(10):
                    status = await reader.readuntil(b"\r\n")
                    fields = await reader.readuntil(b"\r\n\r\n")
                    size = last - first + 1
                    assert status == b"HTTP/1.1 206 Partial Content\r\n"
                    assert f"\r\nContent-Range: bytes {first}-{last}/{len(BODY)}\r\n".encode() in fields
                    assert await reader.readexactly(size) == BODY[first : last + 1]
        finally:
            writer.close()
        assert searched == [len(head) for head in heads]
        assert origin.hits["/v.bin"] == 1
