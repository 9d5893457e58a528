"""Which address a request comes from: the one rule the site ACL, the rate limiter and the access log use, on
the fast path and the full path alike.

A connection's address is its socket's peer, or the client a PROXY header declared (core.proxyproto) on a
listener that expects one. When that address is a trusted forwarder (server.trusted_forwarders: the operator's
own proxies), its X-Forwarded-For is believed as far as it can be: walking the list from the right, every
address that is itself a trusted forwarder is stepped over and the first one that is not is the client (nginx's
real_ip_recursive). Anything left of it was written by someone not trusted to write it. An entry that is not an
address ends the walk at the last trusted hop read: the client's address is then not known any better.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

Networks = tuple[IPv4Network | IPv6Network, ...]
FORWARDED_FOR = b"x-forwarded-for"


def real_client(connection: str, forwarded_for: Iterable[str], trusted: Networks) -> str:
    """The client of a request that came on a connection from `connection`, carrying these X-Forwarded-For
    values (every field, in order); `connection` itself unless it is a trusted forwarder."""
    if not within(connection, trusted):
        return connection
    client = connection
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _address(hop.strip(" \t"))
        if address is None:
            break
        client = str(address)
        if not any(address in net for net in trusted):
            break
    return client


@functools.lru_cache(maxsize=8192)  # asked of every request's connection while forwarders are trusted (2.5 us a parse)
def within(address: str, networks: Networks) -> bool:
    """Is `address` (as the socket or a PROXY header gave it) in one of `networks`? An empty tuple holds none."""
    if not networks:
        return False
    parsed = _address(address)
    return parsed is not None and any(parsed in net for net in networks)


def forwarded_for(head: bytes) -> list[str]:
    """The X-Forwarded-For values of a raw request head, in order: the fast path answers without parsed fields.
    Only read for a connection from a trusted forwarder; a head aiohttp would refuse is never answered there."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.lower() == FORWARDED_FOR:
            values.append(value.strip(b" \t").decode("latin-1"))
    return values


def _address(text: str) -> IPv4Address | IPv6Address | None:
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        if address.scope_id is not None:
            return None
        return address.ipv4_mapped or address  # a dual-stack hop writes an IPv4 client as ::ffff:a.b.c.d
    return address
