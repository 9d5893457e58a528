"""An origin that answers a request without Range with 206 Partial Content for the whole body (Content-Range
bytes 0-(n-1)/n, as some object stores and CDNs in front of origins do): that answer holds the whole
representation, so a fill stores it as it would the 200, and the client that asked for it whole gets a 200. It
was refused as a range the fill did not ask for and passed through: two origin requests per client request,
none of them ever cached."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.origin import Origin

DATA = bytes((i * 13 + i // 1021) % 256 for i in range(2 * 2**20 + 4321))  # three slices
FIELDS = {"Cache-Control": "public, max-age=3600", "ETag": '"w1"', "Content-Type": "application/octet-stream"}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_206_for_the_whole_body_to_a_request_without_range_is_stored_whole(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    async def whole_as_206(request: web.BaseRequest, obj: object) -> web.Response | None:
        if request.headers.get("Range") is not None:
            return None  # a range: answered as asked
        fields = {**FIELDS, "Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}"}
        return web.Response(status=206, body=DATA, headers=fields)

    origin.put("/w", DATA, etag='"w1"', last_modified=None, headers={"Cache-Control": "public, max-age=3600"})
    origin.on_request = whole_as_206
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast)
    async with start_edge(config) as edge:
        answers = [await edge.get("/w") for _ in range(3)]
        assert [(status, body == DATA) for status, _, body in answers] == [(200, True)] * 3
        assert [h["Cache-Status"] for _, h, _ in answers] == [
            "edgecache; fwd=uri-miss; stored",
            "edgecache; hit",
            "edgecache; hit",
        ]
        assert "Content-Range" not in answers[0][1]
        status, fields, body = await edge.get("/w", Range="bytes=2097150-2097159")
        assert (status, body) == (206, DATA[2097150:2097160])
        assert fields["Content-Range"] == f"bytes 2097150-2097159/{len(DATA)}"
        assert fields["Cache-Status"] == "edgecache; hit"
    assert origin.range_hits("/w") == [None]
