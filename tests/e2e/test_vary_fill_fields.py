"""A fill sends the fields of the entry key of the copy it extends, never those the request was decided with: the
request that found the object's record with no Vary, and joined a fill whose answer came back as the gzip variant, is
served that variant's copy, and the copy's next slice must be asked for with `Accept-Encoding: gzip` too. Sent without
it (the Vary of the record the request was decided with), the origin's identity bytes were joined to the gzip bytes
in one answer: the origin gives every variant of a version one strong ETag (a lie, RFC 9110 8.8.3, that real origins
tell), so nothing else could tell them apart. Found by the e2e fuzz (mode one, seed 1: "fwd=stale; stored" answers of
wrong bytes to gzip clients)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin

S = 4096  # the slice
LENGTH = 3 * S - 7  # three slices, every variant and version as long: the lie cannot be told by a length either


def body(version: int, encoding: str | None) -> bytes:
    """Each variant of each version its own bytes at every offset (no slice of one equals another's)."""
    return (f"v{version}-{encoding or 'identity'}|".encode() * LENGTH)[:LENGTH]


def versioned(state: dict[str, int], go: asyncio.Event) -> Callable[[web.BaseRequest, object], object]:
    """v0 and v2 Vary on Accept-Encoding, v1 does not; one ETag per version whatever the variant. The fill of slice 1
    that comes while v1 is current turns the object into v2, and is answered once `go` is set."""

    async def hook(request: web.BaseRequest, obj: object) -> Obj:
        if request.headers.get("Range", "").startswith(f"bytes={S}-") and state["v"] == 1:
            state["v"] = 2
            await go.wait()
        v = state["v"]
        encoding = request.headers.get("Accept-Encoding") if v != 1 else None
        headers = {"Cache-Control": "public, max-age=0"}
        if v != 1:
            headers["Vary"] = "Accept-Encoding"
        return Obj(body(v, encoding), etag=f'"v{v}"', headers=headers)

    return hook


async def until(condition: Callable[[], bool]) -> None:
    """Polled: a request's join of a fill happens inside the node, with no event to wait on."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("fast", [True, False])
async def test_a_copys_next_slice_is_asked_with_its_keys_fields(origin: Origin, tmp_path: Path, fast: bool) -> None:
    state, go = {"v": 0}, asyncio.Event()
    origin.put("/o", b"")
    origin.on_request = versioned(state, go)
    config = replace(make_config(tmp_path / "c", [origin.url], slice_bytes=S), fast_path=fast)
    gzip = {"Accept-Encoding": "gzip"}
    async with start_edge(config) as edge, asyncio.timeout(30):
        # The record names Accept-Encoding; the gzip variant's copy of v0 holds slice 0, stale.
        status, _, got = await edge.get("/o", Range="bytes=0-0", **gzip)
        assert (status, got) == (206, body(0, "gzip")[:1])
        state["v"] = 1
        # Its revalidation brings v1, which does not Vary: stored under the key without a variant, the record's Vary
        # is none now. The request's slice 1 of it is fetched by a fill that turns the object into v2 and is held.
        first = asyncio.create_task(edge.get("/o", Range=f"bytes=0-{2 * S - 1}", **gzip))
        await origin.wait_for_requests(4)
        fills = edge.node.engine.fills
        held = next(f for key in list(fills._by_key) for f in fills.of(key) if f.first_index == 1)
        readers = len(held.expecting)
        # Decided under the record without Vary, this one finds v1 stale; its revalidation, from slice 1, joins the
        # held fill, whose answer is v2's gzip variant: that copy is the one it is served.
        second = asyncio.create_task(edge.get("/o", Range=f"bytes={S}-{LENGTH - 1}", **gzip))
        await until(lambda: len(held.expecting) > readers)
        go.set()
        status, headers, got = await second
        await asyncio.gather(first, return_exceptions=True)  # its v1 answer is cut: its next slice is v2's
    assert (status, headers["ETag"], headers["Content-Range"]) == (206, '"v2"', f"bytes {S}-{LENGTH - 1}/{LENGTH}")
    assert got == body(2, "gzip")[S:]
    asked = [(s.headers.get("Range"), s.headers.get("Accept-Encoding")) for s in origin.seen]
    assert (f"bytes={2 * S}-{3 * S - 1}", "gzip") in asked
    assert (f"bytes={2 * S}-{3 * S - 1}", None) not in asked
