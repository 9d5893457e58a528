"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2): who the client was, as declared
by the load balancer in front of a listener, in the first bytes of the connection.

parse() is given everything the connection has received so far and says whether that is a whole header (and how
many bytes it took), not yet enough, or not a PROXY header at all. A connection calls it again as more arrives,
so a header may come in any number of pieces; the answer is decided as soon as the bytes allow, and the bytes
it waits for are bounded (107 for version 1, 16 + 65,535 for version 2). Nothing here raises on any input.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

V1_MAX = 107  # the longest version 1 header, CRLF included (the spec's worst case)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V2_FIXED = 16  # signature, version and command, family and transport, length
# Address block sizes of version 2: two addresses and two ports.
_V2_INET = 12
_V2_INET6 = 36


@dataclass(frozen=True, slots=True)
class NeedMore:
    """What came so far is the start of a header: wait for more bytes."""


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str


@dataclass(frozen=True, slots=True)
class Header:
    """A whole header. `source` is the client's address, or None when the header gives none that counts (version
    1 UNKNOWN, version 2 LOCAL, UNSPEC or a Unix socket): the connection's own address stands then."""

    source: str | None
    consumed: int  # the header's length: the connection's own bytes start after it


Parsed = NeedMore | Invalid | Header
NEED_MORE = NeedMore()


def parse(data: bytes) -> Parsed:
    """The PROXY header at the start of `data` (version 1 or 2), if there is one."""
    if data.startswith(V2_SIGNATURE):
        return _v2(data)
    if data.startswith(_V1_PREFIX):
        return _v1(data)
    if V2_SIGNATURE.startswith(data[:12]) or _V1_PREFIX.startswith(data[:6]):
        return NEED_MORE  # data is shorter than the signature and the start of one
    return Invalid("expected a PROXY protocol header")


def _v1(data: bytes) -> Parsed:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        return NEED_MORE if len(data) < V1_MAX else Invalid("PROXY v1 header longer than 107 bytes")
    line = data[:end]
    parts = line.split(b" ")
    if parts[1:2] == [b"UNKNOWN"]:
        return Header(None, end + 2)  # the sender does not know (or say) who the client is; the rest is ignored
    if len(parts) != 6:
        return Invalid("PROXY v1 header: expected PROXY TCP4|TCP6 source destination sport dport")
    _, proto, src, dst, sport, dport = parts
    if proto not in (b"TCP4", b"TCP6"):
        return Invalid("PROXY v1 header: protocol must be TCP4, TCP6 or UNKNOWN")
    source = _v1_address(proto, src)
    if source is None or _v1_address(proto, dst) is None:
        return Invalid("PROXY v1 header: bad address")
    if not (_port(sport) and _port(dport)):
        return Invalid("PROXY v1 header: bad port")
    return Header(_client(source), end + 2)


def _v1_address(proto: bytes, raw: bytes) -> IPv4Address | IPv6Address | None:
    try:
        text = raw.decode("ascii")
        address = IPv4Address(text) if proto == b"TCP4" else IPv6Address(text)
    except ValueError:  # UnicodeDecodeError is one
        return None
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        return None  # fe80::1%eth0 names a link of the sender's, not a client
    return address


def _port(raw: bytes) -> bool:
    """A decimal port, 0-65535, without leading zeros (as the spec writes them)."""
    if raw == b"0":
        return True
    return raw.isdigit() and len(raw) <= 5 and raw[:1] != b"0" and int(raw) <= 65535


def _v2(data: bytes) -> Parsed:
    if len(data) < _V2_FIXED:
        return NEED_MORE
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = int.from_bytes(data[14:16], "big")
    if version != 2:
        return Invalid("PROXY v2 header: version must be 2")
    if command > 1:
        return Invalid("PROXY v2 header: command must be LOCAL or PROXY")
    if family > 3 or transport > 2:
        return Invalid("PROXY v2 header: unknown address family or transport")
    if len(data) < _V2_FIXED + length:
        return NEED_MORE
    consumed = _V2_FIXED + length
    if command == 0 or family in (0, 3):
        return Header(None, consumed)  # LOCAL (the balancer's own check), UNSPEC, or a Unix socket's client
    if transport != 1:
        return Invalid("PROXY v2 header: the transport of a TCP connection must be STREAM")
    block = data[_V2_FIXED:consumed]  # addresses, then TLVs, which nothing here needs
    if family == 1:
        if length < _V2_INET:
            return Invalid("PROXY v2 header: too short for IPv4 addresses")
        return Header(str(IPv4Address(block[:4])), consumed)
    if length < _V2_INET6:
        return Invalid("PROXY v2 header: too short for IPv6 addresses")
    return Header(_client(IPv6Address(block[:16])), consumed)


def _client(address: IPv4Address | IPv6Address) -> str:
    """A dual-stack balancer writes an IPv4 client as ::ffff:a.b.c.d: it is the IPv4 client an ACL names."""
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    return str(mapped or address)
