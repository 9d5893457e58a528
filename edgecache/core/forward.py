"""What the edge sends forward: the request fields an origin (or peer) gets, and the Via we add."""

from __future__ import annotations

from edgecache.core.headers import Headers, end_to_end, get_first

VIA = "1.1 edgecache"
# Fields the cache replaces with its own when it fills: the client's range and conditions are answered from
# the cache, so forwarding them would fetch something other than what is being stored.
FILL_OWNED = ("range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
# Fields a client could use to make an origin build a response for another host, scheme or path while the cache
# keys it under the real one (cache poisoning through unkeyed headers): never forwarded.
UNKEYED = (
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "forwarded",
)


def forward_headers(client: Headers, host: str, client_ip: str, *, fill: bool) -> Headers:
    drop = ["host", "x-forwarded-for", "expect", *UNKEYED]
    if fill:
        drop.extend(FILL_OWNED)
    out = list(end_to_end(client, drop=drop))
    out.append(("Host", host))
    prior = get_first(client, "x-forwarded-for")
    out.append(("X-Forwarded-For", f"{prior}, {client_ip}" if prior else client_ip))
    via = get_first(client, "via")
    out = [(k, v) for k, v in out if k.lower() != "via"]
    out.append(("Via", f"{via}, {VIA}" if via else VIA))
    return tuple(out)
