"""The PROXY protocol parser (core.proxyproto), the client-address rule (core.clientaddr) and their config keys."""

from __future__ import annotations

import logging
import struct
from ipaddress import ip_network
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from edgecache.config import Listen, build
from edgecache.core.clientaddr import forwarded_for, real_client, within
from edgecache.core.proxyproto import NEED_MORE, V1_MAX, V2_SIGNATURE, Header, Invalid, parse
from edgecache.errors import ConfigError

V1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n"


def v2(command: int = 1, family: int = 0x11, block: bytes | None = None) -> bytes:
    """A version 2 header: PROXY (1) or LOCAL (0), family/transport byte, address block (with any TLVs)."""
    if block is None:
        block = bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack("!HH", 51234, 80)
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


def test_v1_tcp4_tcp6_and_unknown() -> None:
    assert parse(V1 + b"GET / HTTP/1.1\r\n") == Header("203.0.113.7", len(V1))
    assert parse(V1_TCP6) == Header("2001:db8::7", len(V1_TCP6))
    assert parse(b"PROXY UNKNOWN\r\nGET") == Header(None, 15)
    assert parse(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n") == Header(None, 39)
    mapped = b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n"
    assert parse(mapped) == Header("203.0.113.7", len(mapped))  # the IPv4 client an ACL names


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "expected a PROXY protocol header"),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n", "expected PROXY TCP4|TCP6"),
        (b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n", "protocol must be TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "bad address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad address"),
        (b"PROXY TCP4 203.0.113.07 10.0.0.1 1 2\r\n", "bad address"),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 80\r\n", "bad port"),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 080 80\r\n", "bad port"),
        (b"PROXY TCP4  203.0.113.7 10.0.0.1 1 2\r\n", "expected PROXY TCP4|TCP6"),
        (b"PROXY " + b"x" * (V1_MAX - 6), "longer than 107 bytes"),
        (v2()[:12] + b"\x11" + v2()[13:], "version must be 2"),
        (v2(command=2), "command must be LOCAL or PROXY"),
        (v2(family=0x41), "unknown address family"),
        (v2(family=0x12), "transport of a TCP connection must be STREAM"),
        (v2(block=b"\x00" * 11), "too short for IPv4"),
        (v2(family=0x21, block=b"\x00" * 35), "too short for IPv6"),
    ],
)
def test_junk_is_invalid_with_a_reason(data: bytes, reason: str) -> None:
    got = parse(data)
    assert isinstance(got, Invalid)
    assert reason in got.reason


def test_v2_inet_inet6_local_unspec_and_tlvs_skipped() -> None:
    assert parse(v2() + b"GET") == Header("203.0.113.7", 28)
    inet6 = bytes.fromhex("20010db8000000000000000000000007") + bytes(16) + struct.pack("!HH", 1, 2)
    assert parse(v2(family=0x21, block=inet6)) == Header("2001:db8::7", 16 + 36)
    assert parse(v2(command=0, family=0x00, block=b"")) == Header(None, 16)  # LOCAL: the balancer's health check
    assert parse(v2(command=0)) == Header(None, 28)  # LOCAL with addresses: they are not a client's
    assert parse(v2(family=0x31, block=bytes(216))) == Header(None, 16 + 216)  # a Unix socket's client
    tlvs = bytes([0x04]) + struct.pack("!H", 5) + b"vpc-1" + bytes([0x01]) + struct.pack("!H", 2) + b"h2"
    block = bytes([198, 51, 100, 1, 10, 0, 0, 1]) + struct.pack("!HH", 1, 2) + tlvs
    assert parse(v2(block=block) + b"GET / HTTP/1.1") == Header("198.51.100.1", 16 + len(block))


@pytest.mark.parametrize("header", [V1, V1_TCP6, b"PROXY UNKNOWN\r\n", v2(), v2(command=0, family=0, block=b"")])
def test_every_prefix_asks_for_more_and_the_whole_header_is_decided(header: bytes) -> None:
    for n in range(len(header)):
        assert parse(header[:n]) is NEED_MORE, n
    got = parse(header + b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(got, Header)
    assert got.consumed == len(header)


def test_v2_waits_for_its_declared_length_only() -> None:
    long_block = v2(block=bytes([203, 0, 113, 7]) + bytes(65531))
    assert len(long_block) == 16 + 65535  # the most a header can be
    assert parse(long_block[:-1]) is NEED_MORE
    assert parse(long_block) == Header("203.0.113.7", 16 + 65535)


@given(st.binary(max_size=300))
def test_any_bytes_get_an_answer_never_an_exception(data: bytes) -> None:
    got = parse(data)
    assert got is NEED_MORE or isinstance(got, Invalid | Header)
    if isinstance(got, Header):
        assert 0 < got.consumed <= len(data)


@given(st.sampled_from([V1[:6], V2_SIGNATURE + b"\x21"]), st.binary(max_size=200))
def test_bytes_after_a_signature_get_an_answer_never_an_exception(start: bytes, rest: bytes) -> None:
    got = parse(start + rest)
    assert got is NEED_MORE or isinstance(got, Invalid | Header)


# --- the client-address rule ----------------------------------------------------------------------------------

TRUSTED = (ip_network("10.0.0.0/8"), ip_network("2001:db8:ff::/48"))


def test_xff_is_believed_only_from_a_trusted_forwarder() -> None:
    assert real_client("198.51.100.9", ["203.0.113.7"], TRUSTED) == "198.51.100.9"
    assert real_client("10.0.0.5", ["203.0.113.7"], TRUSTED) == "203.0.113.7"
    assert real_client("10.0.0.5", [], TRUSTED) == "10.0.0.5"
    assert real_client("10.0.0.5", ["203.0.113.7"], ()) == "10.0.0.5"


def test_xff_walk_stops_at_the_rightmost_untrusted_address() -> None:
    # The client wrote the first entry itself: only what trusted hops appended counts (real_ip_recursive).
    chain = ["1.2.3.4, 203.0.113.7", "10.9.9.9"]
    assert real_client("10.0.0.5", chain, TRUSTED) == "203.0.113.7"
    assert real_client("10.0.0.5", ["10.1.1.1, 10.2.2.2"], TRUSTED) == "10.1.1.1"  # all trusted: the leftmost
    assert real_client("10.0.0.5", ["203.0.113.7, garbage, 10.2.2.2"], TRUSTED) == "10.2.2.2"
    assert real_client("10.0.0.5", ["unknown"], TRUSTED) == "10.0.0.5"
    assert real_client("10.0.0.5", [" ::ffff:203.0.113.7 "], TRUSTED) == "203.0.113.7"
    assert real_client("2001:db8:ff::1", ["2001:db8::7"], TRUSTED) == "2001:db8::7"


def test_within_and_forwarded_for() -> None:
    assert within("10.1.2.3", TRUSTED)
    assert not within("-", TRUSTED)
    assert not within("10.1.2.3", ())
    head = b"GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-for: 1.2.3.4\r\nX-Forwarded-For:\t5.6.7.8 \r\n\r\n"
    assert forwarded_for(head) == ["1.2.3.4", "5.6.7.8"]
    assert forwarded_for(b"GET /X-Forwarded-For: 1.2.3.4 HTTP/1.1\r\nHost: a\r\n\r\n") == []


# --- config ---------------------------------------------------------------------------------------------------

SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}


def problems(server: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        build({"server": server, "sites": [SITE]}, "f.toml", Path("/etc/edgecache"))
    return exc.value.problems


def test_config_keys() -> None:
    server = {
        "listen": ["127.0.0.1:8080", "127.0.0.1:8081"],
        "proxy_protocol": ["127.0.0.1:8081"],
        "proxy_protocol_from": ["10.0.0.0/8"],
        "trusted_forwarders": ["10.0.0.0/8", "2001:db8::/32"],
    }
    cfg = build({"server": server, "sites": [SITE]}, "f.toml", Path("/x"))
    assert cfg.proxy_protocol == (Listen("127.0.0.1", 8081),)
    assert cfg.proxy_protocol_from == (ip_network("10.0.0.0/8"),)
    assert cfg.trusted_forwarders == (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))
    default = build({"sites": [SITE]}, "f.toml", Path("/x"))
    assert (default.proxy_protocol, default.proxy_protocol_from, default.trusted_forwarders) == ((), (), ())


def test_a_proxy_listener_anyone_may_send_a_header_to_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    """With proxy_protocol and no proxy_protocol_from, every address that reaches the listener may name any client in
    its header (past a site's ACL, the rate limit, a token bound to a client, into the access log): the check said
    nothing. It is allowed still (a listener only balancers reach), and warned of."""
    server: dict[str, object] = {"listen": ["127.0.0.1:8080"], "proxy_protocol": ["127.0.0.1:8080"]}
    with caplog.at_level(logging.WARNING, "edgecache.config"):
        build({"server": server, "sites": [SITE]}, "f.toml", Path("/x"))
        build({"server": {**server, "proxy_protocol_from": ["10.0.0.0/8"]}, "sites": [SITE]}, "f.toml", Path("/x"))
    assert [r.getMessage() for r in caplog.records] == [
        "f.toml: server.proxy_protocol_from: empty, so any address that reaches a PROXY listener may name any client"
        " (site ACLs, rate limits, tokens bound to a client and the access log believe it): list the balancers"
    ]


def test_bad_config_values_are_named() -> None:
    assert problems({"trusted_forwarders": ["10.0.0.0/33"]}) == [
        "f.toml: server.trusted_forwarders: '10.0.0.0/33' is not a subnet"
    ]
    assert problems({"trusted_forwarders": "10.0.0.0/8"}) == [
        'f.toml: server.trusted_forwarders: expected a list of subnets such as ["10.0.0.0/8", "2001:db8::/32"]'
    ]
    assert problems({"listen": ["127.0.0.1:8080"], "proxy_protocol": ["127.0.0.1:9999"]}) == [
        "f.toml: server.proxy_protocol: 127.0.0.1:9999 is not one of server.listen"
    ]
    assert problems({"proxy_protocol_from": ["10.0.0.0/8"]}) == [
        "f.toml: server.proxy_protocol_from: no listener expects a PROXY header (server.proxy_protocol)"
    ]


def test_proxy_protocol_on_an_https_listener_is_refused(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("video.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "c.pem"))
    tls = {"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "c.pem")}
    server = {"tls_listen": ["127.0.0.1:8443"], "tls": tls, "proxy_protocol": ["127.0.0.1:8443"]}
    assert problems(server) == [
        "f.toml: server.proxy_protocol: 127.0.0.1:8443 is an HTTPS listener: PROXY protocol is only for plain ones"
    ]
