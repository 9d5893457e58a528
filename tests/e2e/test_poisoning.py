"""No client can poison the cache: the request an origin gets on a fill is derived from the cache key alone.

Each test drives the real edge with requests that share a key but differ in what the key leaves out (the Host's
spelling, the target's form, unkeyed query parameters, request fields), and checks the exact request the origin
received, how often it was asked, and the bytes every later viewer gets.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import Edge, make_config, start_edge
from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.origin import Origin

DOT_DOT_REFUSED = b"request target has a '..' segment set off by %2F, %5C, a backslash or ';'\n"


@dataclass(frozen=True)
class Asked:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]  # every field line as it arrived, in order


# The Via of a node's fills and passes names the node by a token (core.forward.via_sent): written as "node" here.
NODE_VIA = re.compile(r"1\.1 edgecache \([0-9a-f]{12}\)")


def record(origin: Origin) -> list[Asked]:
    """Every request the origin receives, exactly (but the node's token in Via); it answers with the Host and target
    it was asked for."""
    asked: list[Asked] = []

    def hook(request: web.BaseRequest, obj: object) -> web.Response | None:
        raw = tuple(
            (k.decode("latin-1"), NODE_VIA.sub("1.1 edgecache (node)", v.decode("latin-1")))
            for k, v in request.raw_headers
        )
        asked.append(Asked(request.method, request.raw_path, raw))
        if request.raw_path.startswith("/echo"):
            body = f"{request.headers.get('Host')} {request.raw_path} {request.headers.get('X-Device', '-')}"
            vary = {"Vary": "X-Device"} if "vary" in request.raw_path else {}
            return web.Response(body=body.encode(), headers={"Cache-Control": "public, max-age=600", **vary})
        if request.raw_path.startswith("/go"):  # a redirect built from the Host it was sent, as origins do
            location = f"http://{request.headers.get('Host')}/landing"
            return web.Response(status=301, headers={"Location": location, "Cache-Control": "max-age=600"})
        return None

    origin.on_request = hook
    return asked


async def raw_get(port: int, head: str) -> tuple[int, dict[str, str], bytes]:
    """One request as written (absolute-form targets, odd Host fields): aiohttp's client would tidy them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1") + b"Connection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


def fill(host: str, target: str, *fields: tuple[str, str]) -> Asked:
    """The request a fill sends: core.forward.fill_request's fields, in its order, and nothing else."""
    return Asked("GET", target, (("Host", host), *fields, ("Via", "1.1 edgecache (node)")))


@pytest.fixture(params=["fast", "framework"])
async def keyed_edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    """The edge with a site that keys on `itag` only, as a video site keeps signatures out of its keys."""
    config = make_config(tmp_path / "cache", [origin.url])
    site = replace(config.sites[0], key_query=("itag",))
    config = replace(config, sites=(site,), fast_path=request.param == "fast")
    async with start_edge(config) as e:
        yield e


async def test_absolute_form_target_sends_the_targets_host(edge: Edge, origin: Origin) -> None:
    asked = record(origin)
    status, _, body = await raw_get(edge.port, "GET http://video.test/echo HTTP/1.1\r\nHost: other.example\r\n")
    assert (status, body) == (200, b"video.test /echo -")
    status, _, body = await raw_get(edge.port, "GET http://Video.Test/echo HTTP/1.1\r\nHost: nosite.example\r\n")
    assert (status, body) == (200, b"video.test /echo -")  # a hit: the same key
    status, headers, body = await edge.get("/echo")
    assert (status, body) == (200, b"video.test /echo -")
    assert "hit" in headers["Cache-Status"]
    assert asked == [fill("video.test", "/echo")]
    # The same Host in origin form is refused; in absolute form it is ignored (RFC 9112 3.2.2), never sent on.
    status, _, _ = await raw_get(edge.port, "GET /echo HTTP/1.1\r\nHost: nosite.example\r\n")
    assert status == 421
    assert origin.hits["/echo"] == 1


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_the_access_log_names_the_host_of_the_key_not_a_host_field_it_overrides(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """An absolute-form target's authority names the site and key; the Host field beside it is ignored, and is not
    what the log line says (a client could write any name there). Both paths log the key's host. A review's probe."""
    record(origin)
    log = tmp_path / "access.log"
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast, access_log=log)
    async with start_edge(config) as edge:
        for extra in ("", "Authorization: a\r\n"):  # a miss, then a pass-through
            head = f"GET http://VIDEO.test.:8080/echo?x=1 HTTP/1.1\r\nHost: evil.test\r\n{extra}"
            status, _, body = await raw_get(edge.port, head)
            assert (status, body) == (200, b"video.test /echo?x=1 -")
    lines = [json.loads(x) for x in log.read_bytes().splitlines()]
    assert [(x["host"], x["path"], x["cache"]) for x in lines] == [
        ("video.test", "/echo?x=1", "miss"),
        ("video.test", "/echo?x=1", "pass"),
    ]


async def test_host_spellings_send_the_keys_host(edge: Edge, origin: Origin) -> None:
    asked = record(origin)
    status, headers, _ = await raw_get(edge.port, "GET /go HTTP/1.1\r\nHost: video.test:6666\r\n")
    assert (status, headers["location"]) == (301, "http://video.test/landing")
    for host in ("Video.Test", "video.test.", "VIDEO.TEST.:80", "video.test"):
        status, headers, _ = await raw_get(edge.port, f"GET /go HTTP/1.1\r\nHost: {host}\r\n")
        assert (status, headers["location"]) == (301, "http://video.test/landing"), host
    assert asked == [fill("video.test", "/go")]
    assert origin.hits["/go"] == 1


async def test_origin_host_is_sent_when_configured(origin: Origin, tmp_path: Path) -> None:
    asked = record(origin)
    config = make_config(tmp_path / "cache", [origin.url])
    config = replace(config, sites=(replace(config.sites[0], origin_host="origin.internal"),))
    async with start_edge(config) as edge:
        status, _, body = await raw_get(edge.port, "GET /echo HTTP/1.1\r\nHost: video.test:6666\r\n")
    assert (status, body) == (200, b"origin.internal /echo -")
    assert asked == [fill("origin.internal", "/echo")]


async def test_repeated_parameters_keep_their_order(edge: Edge, origin: Origin) -> None:
    asked = record(origin)
    for _ in range(2):
        for query in ("itag=2&itag=1", "itag=1&itag=2", "a", "a="):
            status, _, body = await edge.get(f"/echo?{query}")
            assert (status, body) == (200, f"video.test /echo?{query} -".encode()), query
    assert asked == [fill("video.test", f"/echo?{q}") for q in ("itag=2&itag=1", "itag=1&itag=2", "a", "a=")]


async def test_names_are_sorted_and_the_origin_asked_in_that_order(edge: Edge, origin: Origin) -> None:
    asked = record(origin)
    for query in ("b=1&a=2", "a=2&b=1", "a=2&&b=1&"):
        status, _, body = await edge.get(f"/echo?{query}")
        assert (status, body) == (200, b"video.test /echo?a=2&b=1 -"), query
    assert asked == [fill("video.test", "/echo?a=2&b=1")]


async def test_unkeyed_parameters_never_reach_the_origin_on_a_fill(keyed_edge: Edge, origin: Origin) -> None:
    asked = record(origin)
    status, _, body = await keyed_edge.get("/echo?itag=1&lang=EVIL")
    assert (status, body) == (200, b"video.test /echo?itag=1 -")
    status, headers, body = await keyed_edge.get("/echo?lang=en&itag=1")
    assert (status, body) == (200, b"video.test /echo?itag=1 -")
    assert "hit" in headers["Cache-Status"]
    assert asked == [fill("video.test", "/echo?itag=1")]


async def test_pass_through_keeps_every_parameter_but_not_the_raw_host(keyed_edge: Edge, origin: Origin) -> None:
    head = "POST http://video.test/up?sig=abc&itag=1 HTTP/1.1\r\nHost: other.example\r\nContent-Length: 0\r\n"
    status, _, body = await raw_get(keyed_edge.port, head)
    assert (status, body) == (201, b"stored\n")
    status, _, _ = await raw_get(keyed_edge.port, head.replace("POST", "DELETE").replace("video.test", "VIDEO.test."))
    assert status == 204
    # Nothing of them is stored, so every parameter goes; the Host is the key's, whatever the client wrote.
    assert [(s.method, s.path, s.headers["Host"]) for s in origin.seen] == [
        ("POST", "/up?sig=abc&itag=1", "video.test"),
        ("DELETE", "/up?sig=abc&itag=1", "video.test"),
    ]


async def test_a_pass_sends_no_method_override_in_any_spelling(edge: Edge, origin: Origin) -> None:
    """X-HTTP-Method-Override was dropped, but not its other usual spellings (X-HTTP-Method, read by OData and
    ASP.NET; X-Method-Override): a GET passed for its `no-store` reached such an origin as a DELETE, which the edge
    did not see, so it dropped nothing of what it held of the URL (RFC 9111 4.4)."""
    asked = record(origin)
    names = ("X-HTTP-Method", "X-Method-Override", "X-HTTP-Method-Override")
    overrides = "".join(f"{name}: DELETE\r\n" for name in names)
    head = f"GET /echo HTTP/1.1\r\nHost: video.test\r\nCache-Control: no-store\r\n{overrides}"
    status, headers, body = await raw_get(edge.port, head)
    assert (status, headers["cache-status"], body) == (200, "edgecache; fwd=bypass", b"video.test /echo -")
    assert [(a.method, [k for k, _ in a.headers]) for a in asked] == [
        ("GET", ["Host", "Cache-Control", "X-Forwarded-For", "Via"])
    ]


async def test_a_fill_sends_no_client_field_the_key_does_not_hold(edge: Edge, origin: Origin) -> None:
    asked = record(origin)
    poison = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Host": "evil.example",
        "Cookie": "session=attacker",
        "User-Agent": "evil/1.0",
        "Accept-Language": "xx",
        "Via": "1.1 attacker",
        "X-Device": "phone",
    }
    status, _, body = await edge.get("/echo", **poison)
    assert (status, body) == (200, b"video.test /echo -")
    status, headers, body = await edge.get("/echo")
    assert (status, body) == (200, b"video.test /echo -")
    assert "hit" in headers["Cache-Status"]
    assert asked == [fill("video.test", "/echo")]
    assert origin.hits["/echo"] == 1


async def test_varied_fields_are_sent_normalised_and_stored_under_what_was_sent(edge: Edge, origin: Origin) -> None:
    asked = record(origin)
    # The first fill cannot know the Vary yet: it sends no X-Device, and the answer it gets is the no-device
    # variant. The request is then asked again with the field, as the key now names it.
    status, _, body = await edge.get("/echo-vary", **{"X-Device": " phone ,  tv", "Cookie": "c=1"})
    assert (status, body) == (200, b"video.test /echo-vary phone,tv")
    status, _, body = await edge.get("/echo-vary")
    assert (status, body) == (200, b"video.test /echo-vary -")  # the no-device answer, stored by the first fill
    status, headers, body = await edge.get("/echo-vary", **{"X-Device": "phone,tv"})
    assert (status, body) == (200, b"video.test /echo-vary phone,tv")
    assert "hit" in headers["Cache-Status"]
    assert asked == [
        fill("video.test", "/echo-vary"),
        fill("video.test", "/echo-vary", ("x-device", "phone,tv")),
    ]


async def test_a_varied_field_not_in_utf8_is_keyed_as_the_fill_sends_it(edge: Edge, origin: Origin) -> None:
    """aiohttp's client drops the bytes of a field value that are not UTF-8 (its server's parser made them lone
    surrogates): `X-Device: phone\\xff` reached the origin as `phone`, and its answer was stored under a variant of
    its own, one per such spelling, each asked of the origin again. Now each is the variant the fill asks for."""
    asked = record(origin)
    for value in ("phone\xff", "phone\xfe", "pho\xffne", "phone"):
        head = f"GET /echo-vary HTTP/1.1\r\nHost: video.test\r\nX-Device: {value}\r\n"
        status, headers, body = await raw_get(edge.port, head)
        assert (status, body) == (200, b"video.test /echo-vary phone"), value
    assert asked == [
        fill("video.test", "/echo-vary"),
        fill("video.test", "/echo-vary", ("x-device", "phone")),
    ]
    assert headers["cache-status"] == "edgecache; hit"


async def test_authorization_is_passed_through_never_stored(edge: Edge, origin: Origin) -> None:
    asked = record(origin)
    for _ in range(2):
        status, headers, body = await edge.get("/echo", Authorization="Bearer alice")
        assert (status, body) == (200, b"video.test /echo -")
        assert headers["Cache-Status"] == "edgecache; fwd=bypass"
    status, headers, body = await edge.get("/echo")
    assert (status, body) == (200, b"video.test /echo -")
    assert [dict(a.headers).get("Authorization") for a in asked] == ["Bearer alice", "Bearer alice", None]
    assert origin.hits["/echo"] == 3


async def test_a_forward_to_the_owner_carries_the_keys_host_and_target(origin: Origin, tmp_path: Path) -> None:
    asked = record(origin)
    configs = cluster_configs(origin, tmp_path)
    path = next(p for p in (f"/echo/{i}" for i in range(100)) if owner_of(configs, p) == "node2")
    async with started(configs) as nodes:
        # node1 forwards to node2; the client's Host names no site, and an absolute target's authority wins.
        head = f"GET http://Video.Test.{path}?b=1&a=2 HTTP/1.1\r\nHost: other.example\r\n"
        status, headers, body = await raw_get(nodes[0].port, head)
        assert (status, body) == (200, f"video.test {path}?a=2&b=1 -".encode())
        assert "peer" in headers["cache-status"]
        status, headers, body = await nodes[1].get(f"{path}?a=2&b=1")
        assert (status, body) == (200, f"video.test {path}?a=2&b=1 -".encode())
        assert "hit" in headers["Cache-Status"]
    assert asked == [fill("video.test", f"{path}?a=2&b=1")]


@pytest.mark.parametrize("kind", ["private", "chunked"])
async def test_an_unstored_answer_for_another_variant_is_asked_again_with_the_field(
    edge: Edge, origin: Origin, kind: str
) -> None:
    """A Vary'd answer the first fill does not store (private, or of unknown length until it ends) leaves no record
    naming its Vary: the handler looks again with that Vary, not with the record, so it sends the field."""
    asked: list[Asked] = []

    async def hook(request: web.BaseRequest, obj: object) -> web.StreamResponse:
        asked.append(Asked(request.method, request.raw_path, tuple(request.headers.items())))
        device = request.headers.get("X-Device", "-")
        cc = "private, max-age=600" if kind == "private" else "max-age=600"
        resp = web.StreamResponse(headers={"Vary": "X-Device", "Cache-Control": cc})
        if kind == "chunked":
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(f"for {device}".encode())
        await resp.write_eof()
        return resp

    origin.on_request = hook
    status, _, body = await edge.get("/dev", **{"X-Device": "phone"})
    assert (status, body) == (200, b"for phone")
    assert [dict(a.headers).get("x-device") for a in asked] == [None, "phone"]


async def test_a_sites_forward_fields_reach_the_origin_and_nothing_else(origin: Origin, tmp_path: Path) -> None:
    """forward_fields is the operator's one way to send an unkeyed field (a trace id): named fields go, as sent;
    every other field still stays behind, and the answer is still shared by the key."""
    asked = record(origin)
    config = make_config(tmp_path / "cache", [origin.url])
    config = replace(config, sites=(replace(config.sites[0], forward_fields=("x-trace",)),))
    async with start_edge(config) as edge:
        status, _, body = await edge.get("/echo", **{"X-Trace": "t-1", "X-Device": "phone", "Cookie": "a=b"})
        assert (status, body) == (200, b"video.test /echo -")
        status, headers, body = await edge.get("/echo", **{"X-Trace": "t-2"})
        assert (status, body) == (200, b"video.test /echo -")
        assert "hit" in headers["Cache-Status"]
    assert asked == [fill("video.test", "/echo", ("x-trace", "t-1"))]
    assert origin.hits["/echo"] == 1


async def test_a_large_private_answer_for_another_variant_does_not_hold_its_origin(edge: Edge, origin: Origin) -> None:
    """The first fill's answer is private, long and for another variant: the request that started it looks again
    and never reads it. That fill must stop (its origin write fails) instead of waiting for a reader forever."""
    first_done = asyncio.Event()
    chunk = b"x" * 2**20

    async def hook(request: web.BaseRequest, obj: object) -> web.StreamResponse:
        device = request.headers.get("X-Device")
        resp = web.StreamResponse(headers={"Vary": "X-Device", "Cache-Control": "private, max-age=600"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if device is not None:
            await resp.write(f"for {device}".encode())
            await resp.write_eof()
            return resp
        try:
            for _ in range(64):  # far past the fill's bound of a few slices
                await resp.write(chunk)
            await resp.write_eof()
        finally:
            first_done.set()  # written whole, or cut: either way the edge let it go
        return resp

    origin.on_request = hook
    status, _, body = await edge.get("/dev", **{"X-Device": "phone"})
    assert (status, body) == (200, b"for phone")
    async with asyncio.timeout(10):  # the origin read timeout is 5 s: a stuck fill never ends it
        await first_done.wait()
    assert origin.hits["/dev"] == 2


@pytest.mark.parametrize("fast", [True, False])
async def test_no_target_reaches_an_origin_above_its_base_path(origin: Origin, tmp_path: Path, fast: bool) -> None:
    # The origin is the site's directory '/site' of a server that holds others: '/..%2F' is '/../' to a server that
    # decodes %2F (or takes '\' for '/') before it resolves '..', which would take the request out of '/site'.
    asked = record(origin)
    config = make_config(tmp_path / "cache", [origin.url + "/site"])
    async with start_edge(replace(config, fast_path=fast)) as edge:
        for target in ("/..%2Fother/x", "/a/..%2F..%2Fother/x", "/%2E%2E%5Cother/x", "/..\\other/x", "/..;/other/x"):
            status, _, body = await raw_get(edge.port, f"GET {target} HTTP/1.1\r\nHost: video.test\r\n")
            assert (status, body) == (400, DOT_DOT_REFUSED)
    assert asked == []


@pytest.mark.parametrize("fast", [True, False])
async def test_a_fill_asks_for_the_keys_target_byte_for_byte(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """aiohttp's client re-encoded the target it was given (yarl): it decoded the sub-delimiters' escapes in a path
    (%3B, %40, %21, ...; '/', '?', ':' and '@' in a query) and escaped what is not allowed raw ('^', '{', '`', ...).
    `/..%3B/other/x` reached the origin as `/site/..;/other/x`, which Tomcat and Jetty resolve to `/other/x` (';'
    starts a segment's parameters there): above the origin URL's path, as `/..;/other/x` would have, which is
    refused; and two keys, `/a%3Bb` and `/a;b`, were one request to the origin."""
    asked = record(origin)
    config = make_config(tmp_path / "cache", [origin.url + "/site"])
    targets = ("/..%3B/other/x", "/a%3Bb", "/a;b", "/p%40q%21^{}`|", "/q?a=%2F%3F%3A%40")
    async with start_edge(replace(config, fast_path=fast)) as edge:
        for target in targets:
            status, _, _ = await raw_get(edge.port, f"GET {target} HTTP/1.1\r\nHost: video.test\r\n")
            assert status == 404, target  # the test origin has none of them
    assert asked == [fill("video.test", "/site" + target) for target in targets]
