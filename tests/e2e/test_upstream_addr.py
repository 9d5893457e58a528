"""The access log's upstream_addr names whom a request's fetches asked, as nginx's $upstream_addr does: host:port,
those that failed first before the one that answered, and on a failure every origin tried.

The log said `upstream: origin` for a miss, not which of a site's origins answered, and `upstream: -` with nothing
more for a 502: an operator chasing a bad origin could not tell which one it was.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.e2e.procs import free_port
from tests.origin import Origin

BODY = bytes(range(256)) * 64


def _records(log: Path) -> list[tuple[str, int, str, str, str | None]]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [(r["path"], r["status"], r["cache"], r["upstream"], r["upstream_addr"]) for r in lines]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_the_log_names_the_origins_a_request_asked(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """A site of three origins: one refusing connections, one answering 503, one answering. A miss, its hit, a
    pass-through (Authorization), and an object revalidated on every request (its 304 brings no byte: upstream
    "cache", but the origins were asked)."""
    broken = Origin()
    await broken.start()
    broken.on_request = lambda request, obj: web.Response(status=503, text="overloaded")
    origin.put("/obj", BODY)
    origin.put("/stale", BODY, headers={"Cache-Control": "max-age=0"})
    dead = f"127.0.0.1:{free_port()}"
    live, sick = origin.url.removeprefix("http://"), broken.url.removeprefix("http://")
    log = tmp_path / "access.log"
    config = make_config(tmp_path / "cache", [f"http://{dead}", broken.url, origin.url])
    try:
        async with start_edge(replace(config, fast_path=fast, access_log=log)) as edge:
            passed = {"Authorization": "Bearer x"}
            asked = [("/obj", {}), ("/obj", {}), ("/obj", passed), ("/stale", {}), ("/stale", {})]
            for path, headers in asked:
                status, _, body = await edge.get(path, **headers)
                assert (status, body) == (200, BODY)
    finally:
        await broken.stop()
    tried = f"{dead}, {sick}, {live}"
    assert _records(log) == [
        ("/obj", 200, "miss", "origin", tried),
        ("/obj", 200, "hit", "cache", None),
        ("/obj", 200, "pass", "origin", tried),
        ("/stale", 200, "miss", "origin", tried),
        ("/stale", 200, "revalidated", "cache", tried),
    ]
    assert (origin.hits["/obj"], broken.hits["/obj"], origin.hits["/stale"], broken.hits["/stale"]) == (2, 2, 2, 2)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_failed_origin_request_is_logged_with_every_origin_tried(tmp_path: Path, fast: bool) -> None:
    """Every origin down: the 502 (whose answer names the site, never an address: internal) is logged with upstream
    "-" (the node's own answer) and upstream_addr the origins tried, in their order; a pass-through's too."""
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    log = tmp_path / "access.log"
    config = make_config(tmp_path / "cache", [f"http://{first}", f"http://{second}"])
    async with start_edge(replace(config, fast_path=fast, access_log=log)) as edge:
        for headers in ({}, {"Authorization": "Bearer x"}):
            status, _, body = await edge.get("/x", **headers)
            assert (status, body) == (502, b"origin failed: site videos: could not connect\n")
    both = f"{first}, {second}"
    assert _records(log) == [("/x", 502, "error", "-", both), ("/x", 502, "error", "-", both)]
