"""A request answered from a fill of some slices of an object with no validator, whose answer needs slices past that
fill's run: no later fetch can be proven the same version (entry.versioned), so it is answered from a fill of the
whole object, never from the run's slices followed by another fetch's (cut at the first such slice: the new fetch is
another copy, met once the head had gone out)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from edgecache.proxy.fill import Fill
from edgecache.proxy.fillrequest import FillRequest
from tests.conftest import Edge
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import exchange, fast_path_outcomes

MiB = 2**20
BODY = bytes((i * 13 + i // 65521) % 256 for i in range(4 * MiB))  # 4 slices of the edge fixture's 1 MiB


async def asked(edge: Edge, path: str, method: str = "GET", extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """The answer to one request on its own connection, read to the close: a cut body is a short one here."""
    head = f"{method} {path} HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n{extra}\r\n"
    data = await exchange(edge.port, head.encode())
    raw, _, body = data.partition(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), fields, body


def first_held(origin: Origin, joined: asyncio.Event) -> None:
    """The origin holds its answer to the first request for each object until `joined` is set."""
    seen: set[str] = set()

    async def held(request: web.BaseRequest, _obj: object) -> None:
        if request.path not in seen:
            seen.add(request.path)
            await joined.wait()

    origin.on_request = held


def joins_told(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set each time a request joins a fill under way (Engine.fill_for, both paths' way to a miss's fill)."""
    joined = asyncio.Event()
    fill_for = edge.node.engine.fill_for

    def told(
        req: FillRequest, first: int, last: int | None, validate: object = None, whole: bool = False
    ) -> tuple[Fill, bool]:
        fill, ours = fill_for(req, first, last, validate, whole)  # type: ignore[arg-type]
        if not ours:
            joined.set()
        return fill, ours

    monkeypatch.setattr(edge.node.engine, "fill_for", told)
    return joined


@pytest.mark.parametrize(("method", "extra"), [("GET", "Range: bytes=0-999\r\n"), ("HEAD", "")], ids=["range", "head"])
async def test_a_whole_get_that_joins_a_run_of_an_unversioned_object_is_answered_whole_from_one_fetch(
    edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch, method: str, extra: str
) -> None:
    """A asks for bytes 0-999 (or a HEAD): its fill asks the origin for slice 0, which answers with no validator and
    holds that answer until B, a plain GET, has joined the fill. B is answered 200 with all 4 MiB, exact: from a
    fill of the whole object it starts once the head says the copy has no version, since A's fill brings slice 0
    alone. Two origin requests: A's slice, B's whole object (A's copy cannot be completed by another fetch). Then
    a GET is a hit of B's copy. Twice in a row, each time a new object. Before, B's 200 went out from A's slice 0
    and was cut after 1 MiB: slice 1 came of another fetch, another copy (errors.VersionChanged)."""
    joined = joins_told(edge, monkeypatch)
    first_held(origin, joined)
    handed_off = fast_path_outcomes()["handed_off"]
    for n in range(2):
        path = f"/u{n}.bin"
        origin.put(path, BODY, etag=None, last_modified=None)
        joined.clear()
        seen, waits = len(origin.seen), sample_value("edgecache_collapsed_waits_total")
        a = asyncio.ensure_future(asked(edge, path, method, extra))
        async with asyncio.timeout(20):
            await origin.wait_for_requests(seen + 1)
            b = asyncio.ensure_future(asked(edge, path))
            (a_status, a_fields, a_body), (b_status, b_fields, b_body) = await asyncio.gather(a, b)
        if method == "GET":
            assert (a_status, a_fields["content-range"], a_body == BODY[:1000]) == (206, f"bytes 0-999/{MiB * 4}", True)
        else:
            assert (a_status, a_fields["content-length"], a_body) == (200, str(len(BODY)), b"")
        b_answer = (b_status, b_fields["content-length"], len(b_body), b_body == BODY)
        assert b_answer == (200, str(4 * MiB), 4 * MiB, True)
        assert origin.range_hits(path) == ["bytes=0-1048575", None]
        assert sample_value("edgecache_collapsed_waits_total") == (waits or 0) + 1  # B's wait for A's head, once
        status, _, body = await asked(edge, path)
        assert (status, body == BODY, origin.hits[path]) == (200, True, 2)
    assert fast_path_outcomes()["handed_off"] == handed_off  # the fast path answers it all itself


@pytest.mark.parametrize("first", [0, 1000])
async def test_an_open_range_of_an_unversioned_object_longer_than_a_run_is_answered_whole_from_one_fetch(
    edge: Edge, origin: Origin, first: int
) -> None:
    """`Range: bytes=0-` (a player's first request) of a 6 MiB object with no validator, nothing stored: the miss's
    fill asks for a run of 4 slices (cache.fill_slices), and the answer needs 6. It is answered 206 with every byte
    to the end, exact, from a fill of the whole object started once the head says the copy has no version: two origin
    requests, the run and the whole object. Then the same range is a hit. Before, the answer was cut after the run's
    4 MiB: slice 4 came of another fetch, another copy (errors.VersionChanged)."""
    body = BODY + BODY[: 2 * MiB]
    origin.put("/o.bin", body, etag=None, last_modified=None)
    handed_off = fast_path_outcomes()["handed_off"]
    for _ in range(2):
        status, fields, got = await asked(edge, "/o.bin", extra=f"Range: bytes={first}-\r\n")
        assert (status, fields["content-range"]) == (206, f"bytes {first}-{len(body) - 1}/{len(body)}")
        assert (len(got), got == body[first:]) == (len(body) - first, True)
    assert origin.range_hits("/o.bin") == [f"bytes=0-{4 * MiB - 1}", None]
    assert fast_path_outcomes()["handed_off"] == handed_off
