"""RFC 9111 behaviour through the real edge: invalidation, Vary, revalidation, stale-if-error, Age."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from aiohttp import web

from edgecache.storage.store import slice_name
from tests.conftest import Edge
from tests.origin import Origin
from tests.wire import exchange


async def test_unsafe_methods_invalidate(edge: Edge, origin: Origin) -> None:
    for method in ("PUT", "POST", "DELETE", "M-SEARCH"):
        path = f"/doc-{method}"
        origin.put(path, b"v1")
        assert (await edge.get(path))[2] == b"v1"
        assert (await edge.get(path))[1]["Cache-Status"] == "edgecache; hit"
        async with edge.session.request(method, edge.url + path, headers={"Host": "video.test"}, data=b"x") as r:
            assert r.status < 400, (method, r.status)
        origin.put(path, b"v2")  # same validators as v1: only the invalidation can make the edge fetch it
        status, headers, body = await edge.get(path)
        assert (status, body) == (200, b"v2"), method
        assert "fwd=uri-miss" in headers["Cache-Status"], method


async def test_vary_keys_variants_by_the_response(edge: Edge, origin: Origin) -> None:
    def by_language(request: web.BaseRequest, obj: object) -> web.Response:
        lang = request.headers.get("Accept-Language", "none")
        return web.Response(
            body=f"hello in {lang}".encode(), headers={"Vary": "Accept-Language", "Cache-Control": "max-age=60"}
        )

    origin.on_request = by_language
    for _ in range(2):
        for lang in ("en", "fr"):
            status, _, body = await edge.get("/greet", **{"Accept-Language": lang})
            assert (status, body) == (200, f"hello in {lang}".encode())
    # One fetch per variant, then hits; the very first fill sends no Accept-Language (the key named none yet), so
    # its answer is the no-language variant and "en" is fetched again with the field (core/forward.py).
    assert origin.hits["/greet"] == 3


async def test_revalidation_304_keeps_the_body(edge: Edge, origin: Origin) -> None:
    origin.put("/r", b"body", headers={"Cache-Control": "max-age=0, must-revalidate"})
    assert (await edge.get("/r"))[2] == b"body"
    status, headers, body = await edge.get("/r")
    assert (status, body) == (200, b"body")
    assert "fwd=stale" in headers["Cache-Status"]
    assert origin.seen[-1].headers.get("If-None-Match") == '"v1"'


async def test_revalidation_sends_both_validators(edge: Edge, origin: Origin) -> None:
    """RFC 9111 4.3.1: a cache SHOULD send both the stored ETag and its Last-Modified (an origin may weigh either)."""
    origin.put("/both", b"body", headers={"Cache-Control": "max-age=0, must-revalidate"})
    assert (await edge.get("/both"))[2] == b"body"
    status, _, body = await edge.get("/both")
    assert (status, body) == (200, b"body")
    assert origin.hits["/both"] == 2
    sent = origin.seen[-1].headers
    assert (sent.get("If-None-Match"), sent.get("If-Modified-Since")) == ('"v1"', "Sat, 01 Nov 2025 00:00:00 GMT")


@pytest.mark.parametrize("slice_held", ["on disk", "nowhere"])
async def test_revalidation_304_keeps_a_body_that_is_not_in_memory(
    edge: Edge, origin: Origin, slice_held: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 304's fill carries no body: a slice read while it runs comes from disk, or is fetched again. (A node
    restarted on an hour-old cache answered its first requests 502 "origin now has version X, serving X".)"""
    origin.put("/r2", b"body two", headers={"Cache-Control": "max-age=3600"})
    assert (await edge.get("/r2"))[2] == b"body two"
    await edge.node.engine.flush()
    store = edge.node.store
    meta = await store.get_meta("videos|video.test|/r2")
    assert meta is not None
    store.memory.clear()
    if slice_held == "nowhere":
        await store.disk.delete(slice_name("videos|video.test|/r2", meta.slice_version, 0))
    later = time.time() + 7200  # stale: revalidated, and the origin answers 304
    monkeypatch.setattr(time, "time", lambda: later)
    status, headers, body = await edge.get("/r2")
    assert (status, body) == (200, b"body two")
    assert "fwd=stale" in headers["Cache-Status"]
    assert origin.seen[1].headers.get("If-None-Match") == '"v1"'
    assert origin.hits["/r2"] == (2 if slice_held == "on disk" else 3)


async def test_stale_if_error_on_5xx_and_when_origin_is_down(edge: Edge, origin: Origin) -> None:
    origin.put("/s", b"stale but good", headers={"Cache-Control": "max-age=1, stale-if-error=600"})
    assert (await edge.get("/s"))[2] == b"stale but good"
    meta = await edge.node.store.get_meta("videos|video.test|/s")
    assert meta is not None
    # Age the entry instead of sleeping: the stored response times move back by 10 s.
    edge.node.store.remember_meta(
        "videos|video.test|/s",
        replace(meta, request_time=meta.request_time - 10, response_time=meta.response_time - 10),
    )
    origin.on_request = lambda request, obj: web.Response(status=503, text="down")
    status, headers, body = await edge.get("/s")
    assert (status, body) == (200, b"stale but good")
    assert headers["Cache-Status"] == 'edgecache; hit; detail="stale-if-error"'
    await origin.stop()
    status, _, body = await edge.get("/s")
    assert (status, body) == (200, b"stale but good")


async def test_an_entry_that_must_be_revalidated_is_a_504_when_the_origin_is_down(edge: Edge, origin: Origin) -> None:
    """RFC 9111 5.2.2.2 (and 5.2.2.8, 5.2.2.10): a stale entry that must be revalidated is never served stale,
    stale-if-error or not; a cache that cannot reach the origin generates an error, and it SHOULD be a 504. A stale
    entry that is served stale under no rule gets the origin's failure as any miss does: 502."""
    rules = {
        "/must": "max-age=1, must-revalidate, stale-if-error=600",
        "/proxy": "max-age=1, proxy-revalidate, stale-if-error=600",
        "/shared": "max-age=1, s-maxage=1, stale-if-error=600",
        "/plain": "max-age=1",
    }
    for path, cc in rules.items():
        origin.put(path, b"stale", headers={"Cache-Control": cc})
        assert (await edge.get(path))[2] == b"stale"
        meta = edge.node.store.peek_meta(f"videos|video.test|{path}")
        assert meta is not None
        older = replace(meta, request_time=meta.request_time - 10, response_time=meta.response_time - 10)
        edge.node.store.remember_meta(f"videos|video.test|{path}", older)
    await origin.stop()
    for path in rules:
        for _ in range(2):
            status, headers, body = await edge.get(path)
            expected = 502 if path == "/plain" else 504
            assert (status, body) == (expected, b"origin failed: site videos: could not connect\n"), path
            assert headers["Cache-Status"] == 'edgecache; detail="origin failed: site videos: could not connect"'
    assert {path: origin.hits[path] for path in rules} == dict.fromkeys(rules, 1)


async def test_max_forwards_of_options_and_trace(edge: Edge, origin: Origin) -> None:
    """RFC 9110 7.6.2: a proxy that gets an OPTIONS or TRACE with Max-Forwards: 0 answers it itself; with more, it
    sends it on with one less. (Other methods ignore the field.) A TRACE is answered with the request as received
    (9.3.8), less the fields that may hold credentials."""
    origin.put("/opt", b"body")

    async def ask(method: str, **fields: str) -> tuple[int, dict[str, str], bytes]:
        headers = {"Host": "video.test", **fields}
        async with edge.session.request(method, edge.url + "/opt", headers=headers) as r:
            return r.status, {k: v for k, v in r.headers.items() if k not in ("Date", "Server")}, await r.read()

    own = {"Allow": "GET, HEAD, OPTIONS", "Content-Length": "0", "Cache-Status": 'edgecache; detail="max-forwards"'}
    for _ in range(2):
        assert await ask("OPTIONS", **{"Max-Forwards": "0"}) == (200, own, b"")
        status, fields, body = await ask("TRACE", **{"Max-Forwards": "0", "Cookie": "s=1", "X-Mine": "a"})
        assert (status, fields["Content-Type"]) == (200, "message/http")
        first, *lines, end, after = body.split(b"\r\n")
        assert (first, end, after) == (b"TRACE /opt HTTP/1.1", b"", b"")
        assert {b"Host: video.test", b"Max-Forwards: 0", b"X-Mine: a"} <= set(lines)
        assert [line for line in lines if line.lower().startswith(b"cookie")] == []  # credentials never reflected
    assert origin.hits["/opt"] == 0
    assert (await ask("OPTIONS", **{"Max-Forwards": "3"}))[0] == 200
    assert (await ask("TRACE", **{"Max-Forwards": "1"}))[0] == 200
    assert (await ask("OPTIONS"))[0] == 200
    assert (await ask("GET", **{"Max-Forwards": "0"}))[:3:2] == (200, b"body")  # ignored by other methods
    sent = [(s.method, s.headers.get("Max-Forwards")) for s in origin.seen]
    assert sent == [("OPTIONS", "2"), ("TRACE", "0"), ("OPTIONS", None), ("GET", None)]


async def test_options_asterisk_is_answered_by_the_node(edge: Edge, origin: Origin) -> None:
    """RFC 9110 9.3.7: `OPTIONS *` asks about the server in general, which for a viewer is this node: it answers
    itself, with or without Max-Forwards (7.6.2: at 0 it must), and nothing goes to the origin."""
    for fields in (b"Max-Forwards: 0\r\n", b"", b"Max-Forwards: 3\r\n"):
        for _ in range(2):
            request = b"OPTIONS * HTTP/1.1\r\nHost: video.test\r\n" + fields + b"Connection: close\r\n\r\n"
            head, _, body = (await exchange(edge.port, request)).partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            assert (lines[0], body) == (b"HTTP/1.1 200 OK", b""), fields
            assert {b"Allow: GET, HEAD, OPTIONS", b"Content-Length: 0"} <= set(lines[1:]), fields
            assert b'Cache-Status: edgecache; detail="options *"' in lines[1:], fields
    assert origin.seen == []


async def test_age_from_origin_is_passed_on(edge: Edge, origin: Origin) -> None:
    origin.put("/aged", b"x", headers={"Cache-Control": "max-age=3600", "Age": "1800"})
    _, headers, _ = await edge.get("/aged")
    assert int(headers["Age"]) >= 1800


async def test_concurrent_private_responses_are_never_shared(edge: Edge, origin: Origin) -> None:
    count = 0

    async def personal(request: web.BaseRequest, obj: object) -> web.Response:
        nonlocal count
        count += 1
        mine = count
        await asyncio.sleep(0)
        return web.Response(text=f"for request {mine}", headers={"Cache-Control": "private"})

    origin.on_request = personal
    results = await asyncio.gather(*(edge.get("/me") for _ in range(5)))
    bodies = sorted(r[2] for r in results)
    assert len(set(bodies)) == 5  # every client got its own origin answer


async def test_invalidation_reaches_every_variant(edge: Edge, origin: Origin) -> None:
    version = {"n": 1}

    def by_language(request: web.BaseRequest, obj: object) -> web.Response:
        if request.method != "GET":
            return web.Response(status=204)
        lang = request.headers.get("Accept-Language", "none")
        return web.Response(
            text=f"{lang} v{version['n']}", headers={"Vary": "Accept-Language", "Cache-Control": "max-age=600"}
        )

    origin.on_request = by_language
    for lang in ("en", "fr"):
        assert (await edge.get("/v", **{"Accept-Language": lang}))[2] == f"{lang} v1".encode()
    async with edge.session.delete(edge.url + "/v", headers={"Host": "video.test"}) as r:
        assert r.status == 204
    version["n"] = 2
    for lang in ("en", "fr"):
        assert (await edge.get("/v", **{"Accept-Language": lang}))[2] == f"{lang} v2".encode()
        assert (await edge.get("/v", **{"Accept-Language": lang}))[1]["Cache-Status"] == "edgecache; hit"


async def test_date_is_added_when_the_origin_sends_none(edge: Edge, origin: Origin) -> None:
    async def no_date(request: web.BaseRequest, obj: object) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        resp.content_length = 2
        resp.headers["Date"] = ""  # aiohttp adds Date unless told otherwise; an empty one is dropped below
        del resp.headers["Date"]
        await resp.prepare(request)
        await resp.write(b"ok")
        return resp

    origin.on_request = no_date
    await edge.get("/d")
    meta = await edge.node.store.get_meta("videos|video.test|/d")
    assert meta is not None
    dates = [v for k, v in meta.headers if k.lower() == "date"]
    assert len(dates) == 1


async def test_a_fill_overtaken_by_an_invalidation_is_not_stored_when_its_record_was_forgotten(
    edge: Edge, origin: Origin
) -> None:
    """The invalidation's record may leave the worker's memory while the fill waits (another worker's purge
    clears what a worker holds): the fill must still see it, on disk, and store nothing."""
    origin.put("/slow", b"v1")
    release = asyncio.Event()

    async def hold(request: web.BaseRequest, obj: object) -> None:
        if request.method == "GET" and not release.is_set():
            await release.wait()

    origin.on_request = hold
    first = asyncio.create_task(edge.get("/slow"))
    try:
        await origin.wait_for_requests(1)  # the fill has asked; its answer is held back
        async with edge.session.post(edge.url + "/slow", headers={"Host": "video.test"}, data=b"x") as r:
            assert r.status == 201
        edge.node.engine.store._records.clear()  # as catch_up() does when another worker purged something
    finally:
        release.set()
    assert (await first)[2] == b"v1"  # the client that asked gets what the origin sent
    origin.put("/slow", b"v2")  # same validators as v1: only the invalidation can make the edge fetch it
    status, headers, body = await edge.get("/slow")
    assert (status, body) == (200, b"v2")
    assert "fwd=uri-miss" in headers["Cache-Status"]
    assert origin.hits["/slow"] == 3  # the held fill, the POST, and this miss


async def test_a_revalidation_already_answered_is_not_joined(
    edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry the origin says must be revalidated for every request (Cache-Control: no-cache, RFC 9111
    5.2.2.4): each request sends the origin a conditional request, also one that comes while the previous
    revalidation, its 304 in and answered, still writes the refreshed copy to the disk. That request joined the
    finished revalidation and was answered `fwd=stale; fwd-status=304` without the origin asked (5 requests in a
    row cost it 2: found by a differential fuzzer of the two paths, on each path in turn)."""
    origin.put("/nc", b"must revalidate", headers={"Cache-Control": "no-cache"})
    assert (await edge.get("/nc"))[2] == b"must revalidate"
    store = edge.node.store
    write = type(store).put_meta
    gate, held = asyncio.Event(), asyncio.Event()

    async def held_back(entry_key: str, meta: object, lazy: bool = False) -> None:
        held.set()
        await gate.wait()
        await write(store, entry_key, meta, lazy)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "put_meta", held_back)
    try:
        async with asyncio.timeout(10):
            for n in (2, 3):
                status, headers, body = await edge.get("/nc")
                assert (status, body) == (200, b"must revalidate")
                assert headers["Cache-Status"] == "edgecache; fwd=stale; fwd-status=304"
                assert origin.hits["/nc"] == n
            assert held.is_set()  # the second came while the first's copy was still being written
    finally:
        gate.set()
    assert [s.headers.get("If-None-Match") for s in origin.seen] == [None, '"v1"', '"v1"']


async def test_an_answer_that_must_be_revalidated_is_not_joined_once_its_head_is_in(edge: Edge, origin: Origin) -> None:
    """A request that comes after the origin's answer to another request began (its head in, its body still on
    the way) may not be answered from it when that answer may not be reused without revalidation (max-age=0):
    it came before the request did, so the request sends its own (RFC 9111 4, 5.2.2.4). It joined that fill and
    was answered `fwd=stale; stored` with the other's bytes, the origin never asked (found by a differential
    fuzzer of the two paths: a chunked answer with trailers, whose fill ends after its body). A request that
    comes before the answer's head still joins it (collapsed)."""
    origin.put("/mr", b"version 1", headers={"Cache-Control": "max-age=0"}, etag=None, last_modified=None)
    assert (await edge.get("/mr"))[2] == b"version 1"
    body_held, head_sent = asyncio.Event(), asyncio.Event()

    async def new_version(request: web.BaseRequest, obj: object) -> web.StreamResponse:
        n = origin.hits["/mr"]
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=0"})
        resp.content_length = 9
        await resp.prepare(request)
        await resp.write(b"versi")
        if n == 2:  # the first revalidation's body waits until the second request has been decided
            head_sent.set()
            await body_held.wait()
        await resp.write(b"on %d" % n)
        await resp.write_eof()
        return resp

    origin.on_request = new_version
    async with asyncio.timeout(10):
        first = asyncio.ensure_future(edge.get("/mr"))
        await head_sent.wait()
        status, headers, body = await edge.get("/mr")
        body_held.set()
        assert (status, body) == (200, b"version 3")
        assert headers["Cache-Status"] == "edgecache; fwd=stale; stored"
        status, headers, body = await first
    assert (status, body) == (200, b"version 2")
    assert origin.hits["/mr"] == 3
