"""Real client addresses behind a load balancer: a PROXY header (v1, v2) on the listeners that expect one, and the
X-Forwarded-For of trusted forwarders, decide the site ACL, the rate limit and the access log's client, on the
fast path (a warm hit) and on aiohttp's (a miss, or a connection handed over), with real sockets.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from edgecache.config import Config, load
from edgecache.core.proxyproto import V2_SIGNATURE
from edgecache.server import reload
from tests import wire
from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import own_error

BODY = b"only for 203.0.113.0/24\n" * 40
GET = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n"
REFUSED = b"this address may not use site 'videos'\n"
PATHS = ["fast", "framework"]


def v1(client: str) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 51234 80\r\n".encode()


def v2(client: str) -> bytes:
    block = bytes(int(x) for x in client.split(".")) + bytes([127, 0, 0, 1]) + struct.pack("!HH", 51234, 80)
    tlv = bytes([0x04]) + struct.pack("!H", 3) + b"abc"  # a TLV (AWS's VPC endpoint id, say): skipped
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(block) + len(tlv)) + block + tlv


HEADERS = {"v1": v1, "v2": v2}


def answered() -> float:
    return sample_value("edgecache_fast_path_total", {"outcome": "answered"}) or 0.0


def config(tmp_path: Path, origin: Origin, path: str, proxy: bool = True, **kw: Any) -> Config:
    base = make_config(tmp_path / "cache", [origin.url])
    site = replace(base.sites[0], allow=(ip_network("203.0.113.0/24"),))
    return replace(
        base,
        sites=(site,),
        fast_path=path == "fast",
        access_log=tmp_path / "access.log",
        proxy_protocol=base.listen if proxy else (),
        **kw,
    )


async def exchange(port: int, *pieces: bytes) -> tuple[int, bytes]:
    """Send `pieces` one write each on a new connection; the answer's status and body (read to the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def clients(tmp_path: Path) -> list[tuple[str, int, str]]:
    """(client, status, cache) of each access-log line; read once the node is closed (all lines written)."""
    lines = (tmp_path / "access.log").read_bytes().split(b"\n")[:-1]
    return [(r["client"], r["status"], r["cache"]) for r in map(json.loads, lines)]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("path", PATHS)
async def test_the_proxy_header_decides_acl_and_log_on_miss_and_hit(
    origin: Origin, tmp_path: Path, path: str, version: str
) -> None:
    origin.put("/obj", BODY)
    header = HEADERS[version]
    async with start_edge(config(tmp_path, origin, path)) as edge:
        assert await exchange(edge.port, header("203.0.113.7") + GET) == (200, BODY)  # a miss: aiohttp's path
        before = answered()
        assert await exchange(edge.port, header("203.0.113.8") + GET) == (200, BODY)  # a warm hit
        assert answered() - before == (1 if path == "fast" else 0)
        # Refused by the fast path's decision too: handed to aiohttp, which must see the declared address.
        assert await exchange(edge.port, header("198.51.100.1") + GET) == (403, REFUSED)
        declared = edge.node.shared.declared
    assert declared == {}  # what the handed-over connections declared left with them
    assert origin.hits["/obj"] == 1
    assert clients(tmp_path) == [
        ("203.0.113.7", 200, "miss"),
        ("203.0.113.8", 200, "hit"),
        ("198.51.100.1", 403, "error"),
    ]


@pytest.mark.parametrize("path", PATHS)
async def test_a_header_in_pieces_is_read_whole(origin: Origin, tmp_path: Path, path: str) -> None:
    origin.put("/obj", BODY)
    async with start_edge(config(tmp_path, origin, path)) as edge:
        for header in (v1("203.0.113.7"), v2("203.0.113.7")):
            pieces = [header[:1], header[1:5], header[5:13], header[13:15], header[15:-1], header[-1:] + GET[:9]]
            assert await exchange(edge.port, *pieces, GET[9:]) == (200, BODY)
    assert origin.hits["/obj"] == 1
    assert [c for c, _, _ in clients(tmp_path)] == ["203.0.113.7", "203.0.113.7"]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("path", PATHS)
async def test_a_proxy_header_on_a_listener_not_expecting_one_is_refused(
    origin: Origin, tmp_path: Path, path: str, version: str
) -> None:
    origin.put("/obj", BODY)
    # The plain listener serves 127.0.0.1 (the site's ACL aside): the header is what it refuses, not the client.
    cfg = config(tmp_path, origin, path, proxy=False)
    cfg = replace(cfg, sites=(replace(cfg.sites[0], allow=()),))
    async with start_edge(cfg) as edge:
        status, _ = await exchange(edge.port, HEADERS[version]("203.0.113.7") + GET)
        assert status == 400  # it is not HTTP
        assert await exchange(edge.port, GET) == (200, BODY)
    assert origin.hits["/obj"] == 1  # the refused request reached no origin


@pytest.mark.parametrize("path", PATHS)
async def test_a_listener_expecting_a_header_refuses_plain_http(origin: Origin, tmp_path: Path, path: str) -> None:
    origin.put("/obj", BODY)
    async with start_edge(config(tmp_path, origin, path)) as edge:
        assert await exchange(edge.port, GET) == (400, b"expected a PROXY protocol header\n")
        bad = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234\r\n"
        assert await exchange(edge.port, bad + GET) == (
            400,
            b"PROXY v1 header: expected PROXY TCP4|TCP6 source destination sport dport\n",
        )
        # Held at most 107 bytes (v1's bound): a longer line is refused, not waited for.
        assert await exchange(edge.port, b"PROXY TCP4 " + b"1" * 200) == (
            400,
            b"PROXY v1 header longer than 107 bytes\n",
        )
    assert origin.hits["/obj"] == 0


@pytest.mark.parametrize("path", PATHS)
async def test_a_header_from_an_address_not_allowed_to_send_one_is_refused(
    origin: Origin, tmp_path: Path, path: str
) -> None:
    origin.put("/obj", BODY)
    cfg = config(tmp_path, origin, path, proxy_protocol_from=(ip_network("10.0.0.0/8"),))
    async with start_edge(cfg) as edge:
        refused = b"this address may not send a PROXY protocol header\n"
        assert await exchange(edge.port, v1("203.0.113.7") + GET) == (400, refused)
        # Written as every answer of the node's own is (proxy.encode.error): Cache-Status, Date, Server and all.
        answer = await wire.exchange(edge.port, v1("203.0.113.7") + GET)
        assert answer == own_error(answer, 400, refused[:-1].decode())
    async with start_edge(replace(cfg, proxy_protocol_from=(ip_network("127.0.0.0/8"),))) as edge:
        assert await exchange(edge.port, v1("203.0.113.7") + GET) == (200, BODY)
    assert origin.hits["/obj"] == 1


@pytest.mark.parametrize("path", PATHS)
async def test_a_header_that_never_ends_is_cut_at_the_header_timeout(origin: Origin, tmp_path: Path, path: str) -> None:
    cfg = config(tmp_path, origin, path, header_timeout=0.3)
    async with start_edge(cfg) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(b"PROXY TCP4 203.0.113.7")
            async with asyncio.timeout(10):
                raw = await reader.read(-1)  # ends: the node closed the connection
        finally:
            writer.close()
    assert raw == own_error(raw, 408, "request head not received in time")


@pytest.mark.parametrize("path", PATHS)
async def test_xff_of_a_trusted_forwarder_is_believed_on_miss_and_hit(
    origin: Origin, tmp_path: Path, path: str
) -> None:
    origin.put("/obj", BODY)
    cfg = config(tmp_path, origin, path, proxy=False, trusted_forwarders=(ip_network("127.0.0.0/8"),))
    forwarded = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nX-Forwarded-For: %s\r\nConnection: close\r\n\r\n"
    async with start_edge(cfg) as edge:
        assert await exchange(edge.port, forwarded % b"203.0.113.7") == (200, BODY)
        before = answered()
        # What the client wrote itself (left of the rightmost untrusted hop) is not believed.
        assert await exchange(edge.port, forwarded % b"198.51.100.1, 203.0.113.8, 127.0.0.9") == (200, BODY)
        assert answered() - before == (1 if path == "fast" else 0)
        assert await exchange(edge.port, forwarded % b"203.0.113.8, 198.51.100.1") == (403, REFUSED)
    assert origin.hits["/obj"] == 1
    assert "X-Forwarded-For" not in origin.seen[0].headers  # a fill is built from the key alone
    assert clients(tmp_path) == [
        ("203.0.113.7", 200, "miss"),
        ("203.0.113.8", 200, "hit"),
        ("198.51.100.1", 403, "error"),
    ]


@pytest.mark.parametrize("path", PATHS)
async def test_xff_of_an_untrusted_client_is_ignored(origin: Origin, tmp_path: Path, path: str) -> None:
    origin.put("/obj", BODY)
    cfg = config(tmp_path, origin, path, proxy=False, trusted_forwarders=(ip_network("10.0.0.0/8"),))
    forwarded = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n"
    async with start_edge(cfg) as edge:
        assert await exchange(edge.port, forwarded) == (403, REFUSED)
    assert origin.hits["/obj"] == 0
    assert clients(tmp_path) == [("127.0.0.1", 403, "error")]  # the socket's address


@pytest.mark.parametrize("path", PATHS)
async def test_the_rate_limit_counts_the_declared_client(origin: Origin, tmp_path: Path, path: str) -> None:
    origin.put("/obj", BODY)
    # One request per client per 1000 s: a second one from the same client is refused whatever the timing.
    cfg = config(tmp_path, origin, path, rate_limit=0.001, burst=1.0)
    async with start_edge(cfg) as edge:
        assert await exchange(edge.port, v2("203.0.113.7") + GET) == (200, BODY)
        assert await exchange(edge.port, v2("203.0.113.8") + GET) == (200, BODY)  # another client: its own bucket
        status, body = await exchange(edge.port, v2("203.0.113.7") + GET)
        assert (status, body) == (429, b"too many requests from this address\n")
    assert origin.hits["/obj"] == 1
    assert clients(tmp_path) == [
        ("203.0.113.7", 200, "miss"),
        ("203.0.113.8", 200, "hit"),
        ("203.0.113.7", 429, "error"),
    ]


@pytest.mark.parametrize("path", PATHS)
async def test_the_rate_limit_counts_an_ipv6_client_by_its_64(origin: Origin, tmp_path: Path, path: str) -> None:
    # An IPv6 subscriber is given a /64 at least (RFC 6177): a bucket per address would give it 2**64 of them.
    origin.put("/obj", BODY)
    cfg = config(tmp_path, origin, path, rate_limit=0.001, burst=1.0)
    cfg = replace(cfg, sites=(replace(cfg.sites[0], allow=()),))

    def v1_six(client: str) -> bytes:
        return f"PROXY TCP6 {client} ::1 51234 80\r\n".encode()

    async with start_edge(cfg) as edge:
        assert await exchange(edge.port, v1_six("2001:db8:1:2::7") + GET) == (200, BODY)
        assert await exchange(edge.port, v1_six("2001:db8:1:3::7") + GET) == (200, BODY)  # another /64
        status, body = await exchange(edge.port, v1_six("2001:db8:1:2:ffff::8") + GET)
        assert (status, body) == (429, b"too many requests from this address\n")
    assert origin.hits["/obj"] == 1
    assert clients(tmp_path) == [
        ("2001:db8:1:2::7", 200, "miss"),
        ("2001:db8:1:3::7", 200, "hit"),
        ("2001:db8:1:2:ffff::8", 429, "error"),
    ]


@pytest.mark.parametrize("path", PATHS)
async def test_a_pass_through_names_the_declared_client_as_its_hop(origin: Origin, tmp_path: Path, path: str) -> None:
    post = b"POST /upload HTTP/1.1\r\nHost: video.test\r\nContent-Length: 7\r\nConnection: close\r\n\r\npayload"
    async with start_edge(config(tmp_path, origin, path)) as edge:
        status, _ = await exchange(edge.port, v1("203.0.113.7") + post)
    assert status == 201
    assert origin.objects["/upload"].data == b"payload"
    assert [(s.method, s.headers["X-Forwarded-For"]) for s in origin.seen] == [("POST", "203.0.113.7")]


@pytest.mark.parametrize("path", PATHS)
async def test_a_pass_through_sends_no_address_a_client_claims_in_another_spelling(
    origin: Origin, tmp_path: Path, path: str
) -> None:
    """X-Real-IP and the like were dropped, but not PHP's other usual sources of a client's address (Client-IP,
    X-Forwarded, Forwarded-For), nor the fields spelt with '_' for '-', which CGI, PHP and WSGI servers read as the
    same variable (X_Forwarded_For is HTTP_X_FORWARDED_FOR): any client of a pass could claim any address there."""
    claims = {
        "Client-IP": "6.6.6.6",
        "X-Forwarded": "for=6.6.6.6",
        "Forwarded-For": "6.6.6.6",
        "X_Forwarded_For": "6.6.6.6",
        "X_Real_IP": "6.6.6.6",
        "X_Forwarded_Host": "evil.test",
    }
    fields = "".join(f"{k}: {v}\r\n" for k, v in claims.items()).encode()
    post = b"POST /upload HTTP/1.1\r\nHost: video.test\r\n" + fields + b"X-Trace: 7\r\nContent-Length: 7\r\n"
    async with start_edge(config(tmp_path, origin, path)) as edge:
        status, _ = await exchange(edge.port, v1("203.0.113.7") + post + b"Connection: close\r\n\r\npayload")
    assert status == 201
    assert origin.objects["/upload"].data == b"payload"
    (seen,) = origin.seen
    assert (seen.method, seen.headers["X-Forwarded-For"], seen.headers["X-Trace"]) == ("POST", "203.0.113.7", "7")
    assert sorted(set(seen.headers) & set(claims)) == []


@pytest.mark.parametrize("path", PATHS)
async def test_a_pass_through_sends_every_x_forwarded_for_line_on(origin: Origin, tmp_path: Path, path: str) -> None:
    # A balancer that adds its own X-Forwarded-For line (HAProxy's option forwardfor) after the client's: the
    # origin must get both, in order, or the client's own line is all it sees of the client.
    cfg = config(tmp_path, origin, path, proxy=False, trusted_forwarders=(ip_network("127.0.0.0/8"),))
    post = (
        b"POST /upload HTTP/1.1\r\nHost: video.test\r\nX-Forwarded-For: 198.51.100.1\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\nContent-Length: 7\r\nConnection: close\r\n\r\npayload"
    )
    async with start_edge(cfg) as edge:
        assert (await exchange(edge.port, post))[0] == 201
    assert [(s.method, s.headers["X-Forwarded-For"]) for s in origin.seen] == [
        ("POST", "198.51.100.1, 203.0.113.7, 127.0.0.1")
    ]
    assert clients(tmp_path) == [("203.0.113.7", 201, "pass")]


async def test_trusted_forwarders_change_on_reload(origin: Origin, tmp_path: Path) -> None:
    origin.put("/obj", BODY)
    path = tmp_path / "edge.toml"
    site = f'name = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\nallow = ["203.0.113.0/24"]'
    doc = '[server]\ntrusted_forwarders = [{}]\n[cache]\ndir = "cache"\n[[sites]]\n' + site
    forwarded = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n"
    path.write_text(doc.format('"10.0.0.0/8"'))
    async with start_edge(replace(load(path), listen=make_config(tmp_path, []).listen)) as edge:
        assert await exchange(edge.port, forwarded) == (403, REFUSED)
        path.write_text(doc.format('"127.0.0.0/8"'))
        assert await reload(edge.node)
        assert await exchange(edge.port, forwarded) == (200, BODY)
    assert origin.hits["/obj"] == 1


@pytest.mark.parametrize("path", PATHS)
async def test_trusted_forwarders_change_on_reload_for_connections_already_open(
    origin: Origin, tmp_path: Path, path: str
) -> None:
    """The fast path judged whether a connection came from a trusted forwarder once, when it was made: a balancer's
    keep-alive connection (they last hours) had its X-Forwarded-For ignored after a reload trusted it, and every
    client behind it was refused by the ACL as the balancer's own address, until it reconnected."""
    from tests.wire import read_answer

    origin.put("/obj", BODY)
    path_ = tmp_path / "edge.toml"
    site = f'name = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\nallow = ["203.0.113.0/24"]'
    doc = '[server]\nfast_path = {}\ntrusted_forwarders = [{}]\n[cache]\ndir = "cache"\n[[sites]]\n' + site
    fast = "true" if path == "fast" else "false"
    forwarded = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
    path_.write_text(doc.format(fast, '"10.0.0.0/8"'))
    async with start_edge(replace(load(path_), listen=make_config(tmp_path, []).listen)) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            async with asyncio.timeout(10):
                writer.write(forwarded)
                assert (await read_answer(reader))[::2] == (403, REFUSED)
                path_.write_text(doc.format(fast, '"127.0.0.0/8"'))
                assert await reload(edge.node)
                for _ in range(2):  # a miss, then a hit
                    writer.write(forwarded)
                    assert (await read_answer(reader))[::2] == (200, BODY)
        finally:
            writer.close()
    assert origin.hits["/obj"] == 1
