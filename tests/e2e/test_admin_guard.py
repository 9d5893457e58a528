"""Every admin route needs a token (but the public ones), and no bytes in any admin input give a 5xx.

The routes are read from the admin app's own router, so a route added later is walked without a line here.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest

from edgecache.admin.auth import PUBLIC
from edgecache.config import Listen, Site
from edgecache.server import _start_admin
from tests.conftest import start_edge
from tests.e2e.adminkit import OPERATOR, VIDEOS, AdminNode, admin_node, node_config
from tests.e2e.procs import free_port
from tests.origin import Origin
from tests.wire import exchange, own_error

SEED = 1313
CASES_PER_ROUTE = 60


def routes(node: AdminNode) -> list[tuple[str, str]]:
    """(method, path) of every registered route, each {placeholder} filled in."""
    found = []
    for route in node.app.router.routes():
        assert route.resource is not None
        path = re.sub(r"\{[^}]*\}", "some-id", route.resource.canonical)
        found.append((route.method, path))
    assert len(found) >= 8, found  # ring, purge, prefetch x4, metrics, healthz, readyz (with their HEADs)
    return found


async def raw(node: AdminNode, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One request as exact bytes over a fresh connection; the status and the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert m is not None, answer[:200]
    return int(m.group(1)), answer


def request(method: str, path: bytes, *headers: bytes) -> bytes:
    return method.encode() + b" " + path + b" HTTP/1.1\r\nHost: admin\r\n" + b"".join(h + b"\r\n" for h in headers)


async def test_every_route_but_the_public_ones_needs_a_token(origin: Origin, tmp_path: Path) -> None:
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        for method, path in routes(node):
            p = path.encode()
            no_token = await raw(node, request(method, p))
            wrong = await raw(node, request(method, p, b"Authorization: Bearer not-the-token-at-all"))
            odd = await raw(node, request(method, p, b"Authorization: Bearer \xff\xfe" + OPERATOR.encode()[2:]))
            if path in PUBLIC:
                assert no_token[0] in (200, 503), (method, path, no_token)
                continue
            for status, answer in (no_token, wrong, odd):
                assert status == 401, (method, path, answer[:300])
                assert b"WWW-Authenticate: Bearer" in answer
        # The ring answers with a token, and never without one.
        assert (await raw(node, request("GET", b"/ring?url=http://video.test/a")))[0] == 401
        status, answer = await raw(
            node, request("GET", b"/ring?url=http://video.test/a", b"Authorization: Bearer " + OPERATOR.encode())
        )
        assert status == 200, answer
        assert sum(origin.hits.values()) == 0


ODD = [
    "\x00", "%00", "%", "%zz", "\u00ff", "\ud800", "..", "//", "\\", "[", "http://[::1", "http://video.test:99999/",
    "http://video.test/%00/", "http://video.test/a b/", "http://video.test/\x7f", "\t", "\r", "{", "'", '"',
    "http://video.test/" + "a" * 9000, "http://@/", "http://video.test/../../x/", "9" * 400, "-1", "1e9999",
]  # fmt: skip


def odd_url(rng: random.Random) -> str:
    """Mostly URLs of the configured site with odd pieces in them, sometimes not URLs at all."""
    start = rng.choice(["http://video.test/", "http://video.test/", "https://video.test:", "http://[", "http://", ""])
    return start + "".join(rng.choice(ODD) for _ in range(rng.randrange(1, 3)))


def odd_value(rng: random.Random) -> object:
    """A JSON value of any shape, often a string made of odd pieces."""
    shape = rng.randrange(8)
    if shape == 0:
        return rng.choice([None, True, False, 0, -1, 2**70, 1.5, float("1e308"), float("inf"), float("nan")])
    if shape == 1:
        return [odd_value(rng) for _ in range(rng.randrange(3))]
    if shape == 2:
        return {rng.choice(["url", "urls", "prefix", "site", "soft", "window"]): odd_value(rng)}
    return "".join(rng.choice(ODD) for _ in range(rng.randrange(1, 4)))


def odd_body(rng: random.Random) -> bytes:
    keys = ["url", "prefix", "site", "soft", "local", "urls", "concurrency", "bandwidth", "window", "priority",
            "renditions", "window_start", "window_end"]  # fmt: skip
    shape = rng.randrange(7)
    if shape == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if shape == 1:
        return json.dumps([odd_value(rng) for _ in range(rng.randrange(4))]).encode()
    body = {k: odd_value(rng) for k in rng.sample(keys, rng.randrange(1, 4))}
    if shape == 2:
        body["urls"] = [rng.choice(ODD), "http://video.test/fuzz"]
    if shape >= 3:
        body = {rng.choice(["url", "prefix"]): odd_url(rng), "urls": [odd_url(rng)], **dict(list(body.items())[:1])}
    return json.dumps(body).encode("utf-8", "surrogatepass")


def odd_bytes(rng: random.Random) -> bytes:
    pieces = [b"\x00", b"%00", b"%", b"%ff", b"\xff", b"\xc3(", b"\x80", b"'", b"..", b"/", b"?", b"&", b"=", b"\x7f"]
    return b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 5)))


async def test_odd_bytes_in_any_admin_input_never_give_a_5xx(origin: Origin, tmp_path: Path) -> None:
    origin.put("/fuzz", b"fuzz")
    rng = random.Random(SEED)
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        for method, path in routes(node):
            for _ in range(CASES_PER_ROUTE):
                target = path.encode()
                headers = [b"Authorization: Bearer " + rng.choice([OPERATOR, VIDEOS]).encode()]
                what = rng.randrange(4)
                if what == 0:
                    target += odd_bytes(rng)
                elif what == 1:
                    query = rng.choice([b"url=", b"url=", b"priority=", b"window_start=", b""])
                    url = quote(odd_url(rng), "/:", errors="surrogatepass").encode()
                    target += b"?" + query + rng.choice([odd_bytes(rng), url])
                elif what == 2:
                    headers.append(
                        rng.choice([b"Content-Type: ", b"X-Odd: ", b"Authorization: Bearer "]) + odd_bytes(rng)
                    )
                body = odd_body(rng) if method in ("POST", "DELETE") else b""
                if body and rng.random() < 0.8:
                    headers.append(b"Content-Type: application/json")
                status, answer = await raw(node, request(method, target, *headers), body)
                assert status < 500 or (path == "/readyz" and status == 503), (method, target, body, answer[:400])
                assert b"Traceback" not in answer, answer[:400]
        await node.jobs.close()


async def test_json_nested_too_deeply_is_a_400_on_every_route_that_reads_json(origin: Origin, tmp_path: Path) -> None:
    """json's decoder recurses: a body of 100,000 '[' (100 KB, well under the 1 MiB bound) raised RecursionError,
    which aiohttp answered 500."""
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        posts = [path for method, path in routes(node) if method == "POST"]
        assert {"/purge", "/prefetch", "/purges/after"} <= set(posts), posts
        deep = b"[" * 100_000 + b"]" * 100_000
        inside = b'{"urls": ["http://video.test/a"], "renditions": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
        for path in posts:
            for body in (deep, inside):
                head = request("POST", path.encode(), b"Authorization: Bearer " + OPERATOR.encode())
                status, answer = await raw(node, head + b"Content-Type: application/json\r\n", body)
                assert status == 400, (path, answer[:400])
                assert b"nested too deeply" in answer, answer[:400]
        await node.jobs.close()


async def test_the_admin_listener_closes_a_connection_whose_head_does_not_come_in_time(
    origin: Origin, tmp_path: Path
) -> None:
    """aiohttp bounds no request head: a client sending nothing, or a head a byte at a time, held its connection
    (a descriptor of the worker that also serves viewers) for as long as it liked. As on the client port, the
    head must be whole within server.header_timeout, or the connection is closed with a 408."""
    port = free_port()
    cfg = replace(node_config(origin, tmp_path / "cache"), admin=Listen("127.0.0.1", port), header_timeout=0.3)
    async with start_edge(cfg) as edge:
        admin = await _start_admin(edge.node, edge.runner)
        assert admin is not None
        try:
            for partial in (b"", b"GET /healthz HTTP/1.1\r\nHost: a\r\n", b"GET /healthz HTTP/1.1\r\n"):
                for _ in range(2):
                    data = await exchange(port, partial)  # until the node closes it
                    assert data == own_error(data, 408, "request head not received in time"), (partial, data)
            whole = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert whole.startswith(b"HTTP/1.1 200 OK\r\n"), whole  # a whole head, answered as ever
        finally:
            await admin.cleanup()


async def test_a_body_that_does_not_all_come_gets_a_408(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token holder's POST that announced 1,000 bytes and sent 6 held its request (and a descriptor of the
    worker that serves viewers too) for good: the whole body must come within admin.body.BODY_SECONDS."""
    from edgecache.admin import body

    monkeypatch.setattr(body, "BODY_SECONDS", 0.3)
    # The stop cuts what aiohttp still runs after drain: its reading on, for its lingering_time (10 s), what is
    # left of each body answered 408, for clients that have gone.
    async with admin_node(replace(node_config(origin, tmp_path / "c"), drain=0.5)) as node:
        for path, kind in (
            ("/purge", "application/json"),
            ("/prefetch", "text/plain"),
            ("/prefetch", "application/json"),
        ):
            for _ in range(2):
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {OPERATOR}\r\n"
                    f"Content-Type: {kind}\r\nContent-Length: 1000\r\n\r\n"
                ).encode()
                reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
                writer.write(head + b'{"url"')
                try:  # the answer, then aiohttp lingers reading what may come, up to its lingering_time
                    async with asyncio.timeout(5):
                        answer = await reader.readuntil(b"\r\n\r\n")
                        text = await reader.readexactly(int(re.findall(rb"Content-Length: (\d+)", answer)[0]))
                finally:
                    writer.transport.abort()
                assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
                assert b"\r\nConnection: close\r\n" in answer
                assert text == b'{"error": "the body did not all come within 0.3 s"}\n'


async def test_a_provider_cannot_tell_another_providers_host_or_site_from_none(origin: Origin, tmp_path: Path) -> None:
    """/ring, purge and prefetch answered another provider's host with 403 naming its site, and a host (or a site
    name) no site has with 404 or 400: a provider could list the edge's other hosts and sites. To a provider both
    are the same 403, naming neither; an operator still learns which host no site has."""
    other = Site(name="other", hosts=("other.test",), origins=(origin.url,))
    refused = (403, {"error": "token 'videos' may act on its own sites only"})
    async with admin_node(node_config(origin, tmp_path / "c", other)) as node:
        for host in ("other.test", "nowhere.test"):
            url = f"http://{host}/a"
            assert await node.call("GET", f"/ring?url={quote(url)}", VIDEOS) == refused, host
            assert await node.call("POST", "/purge", VIDEOS, json={"url": url}) == refused, host
            assert await node.call("POST", "/purge", VIDEOS, json={"prefix": url[:-1]}) == refused, host
            assert await node.call("POST", "/prefetch", VIDEOS, json=[url]) == refused, host
        for site in ("other", "nope"):
            assert await node.call("POST", "/purge", VIDEOS, json={"site": site}) == refused, site
        status, answer = await node.call("GET", f"/ring?url={quote('http://nowhere.test/a')}", OPERATOR)
        assert (status, answer) == (404, {"url": "http://nowhere.test/a", "error": answer["error"]})
        assert "nowhere.test" in str(answer["error"])
        assert (await node.call("GET", f"/ring?url={quote('http://video.test/a')}", VIDEOS))[0] == 200


async def test_a_head_the_parser_refuses_gets_a_reason_that_echoes_nothing(origin: Origin, tmp_path: Path) -> None:
    """The admin listener answered a head aiohttp's parser refuses with the parser's message, which quotes the
    client's bytes (`GET *<b>x` got `*<b>x` back); now a reason of ours, as the client listener's (proxy.badhead)."""
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        for _ in range(2):
            status, answer = await raw(node, b"GET *<b>x HTTP/1.1\r\nHost: admin\r\n")
            assert status == 400, answer
            target = b"invalid request target: an absolute path, an absolute URL, or * for OPTIONS only\n"
            assert answer.partition(b"\r\n\r\n")[2] == target
        await node.jobs.close()


async def test_a_key_the_api_does_not_take_is_refused_not_ignored(origin: Origin, tmp_path: Path) -> None:
    """A purge's or a prefetch job's key the API does not know (a typo: `sfot`, `priorty`) was ignored: the purge was
    hard, the job ran at the default priority, and the answer said it was done. And a purge's `local` of another
    type than a boolean was taken as false. Each is a 400 naming the key now, and nothing is done."""
    origin.put("/a", b"a")
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        url = "http://video.test/a"
        assert (await node.edge.get("/a"))[0] == 200
        takes = "a purge takes url, prefix or site, and soft"
        for body, error in [
            ({"url": url, "sfot": True}, f"unknown key 'sfot': {takes}"),
            ({"site": "videos", "Soft": True}, f"unknown key 'Soft': {takes}"),
            ({"url": url, "local": "yes"}, "local must be true or false"),
            ({"url": url, "local": 0}, "local must be true or false"),
        ]:
            assert await node.call("POST", "/purge", json=body) == (400, {"error": error}), body
        soft = {"json": {"url": url}, "params": {"soft": "true"}}  # the query is never read: not a hard purge
        error = "unknown parameter 'soft': a purge takes url, prefix or site, and soft in its body"
        assert await node.call("POST", "/purge", **soft) == (400, {"error": error})
        options = "priority, concurrency, bandwidth, window (or window_start and window_end) and renditions"
        for kw, error in [
            ({"json": {"urls": [url], "priorty": 5}}, f"unknown key 'priorty': a job takes urls, {options}"),
            (
                {"json": {"urls": [url], "window": {"start": "01:00", "end": "02:00", "tz": "UTC"}}},
                "unknown key 'tz' in window: it takes start and end",
            ),
            (
                {"data": url, "params": {"priorty": "5"}},  # a str body is sent as text/plain
                f"unknown parameter 'priorty': a job takes {options}",
            ),
            (
                {"json": [url], "params": {"concurrency": "1"}},
                "unknown parameter 'concurrency': with a JSON body a job takes its options in the body",
            ),
        ]:
            assert await node.call("POST", "/prefetch", **kw) == (400, {"error": error}), kw
        assert await node.call("GET", "/prefetch") == (200, [])
        assert (await node.edge.get("/a"))[0] == 200
    assert origin.hits["/a"] == 1  # never purged
