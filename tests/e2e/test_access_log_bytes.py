"""Any bytes a client sends in a logged field leave one parseable access-log line and never stop the writer.

A Range value with a byte that is not UTF-8 used to kill the access-log thread: every later line piled up in
memory, none reached the file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.wire import exchange, fast_path_outcomes

BODY = bytes(range(256)) * 8


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_non_utf8_range_is_logged_and_so_is_the_next_request(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    origin.put("/obj", BODY)
    log_path = tmp_path / "access.log"
    config = replace(make_config(tmp_path / "cache", [origin.url]), fast_path=fast, access_log=log_path)
    async with start_edge(config) as edge:
        before = fast_path_outcomes()["handed_off"]
        raw = await exchange(
            edge.port, b"GET /obj HTTP/1.1\r\nHost: video.test\r\nRange: bytes=\xff0-9\r\nConnection: close\r\n\r\n"
        )
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")  # an invalid Range is ignored: the whole object
        assert body == BODY
        status, _, after = await edge.get("/obj", Range="bytes=0-9")
        assert (status, after) == (206, BODY[:10])
        assert fast_path_outcomes()["handed_off"] == before  # a value past ASCII is the fast path's too
    # The node is closed: its writer has written everything it was given.
    records = [json.loads(line) for line in log_path.read_bytes().split(b"\n")[:-1]]
    assert [(r["path"], r["range"], r["status"]) for r in records] == [
        ("/obj", "bytes=\udcff0-9", 200),
        ("/obj", "bytes=0-9", 206),
    ]
    assert log_path.read_bytes().isascii()
