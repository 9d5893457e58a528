"""What the edge sends forward: the exact request an origin (or peer) gets, built here and nowhere else.

The rule: what is keyed is what is fetched. A fill's request is a function of its entry key alone (the key's
host, path and query, and the Vary'd fields the entry key holds) plus what the cache itself asks for (a run of
slices, a validator of the stored copy). Nothing else a client sent reaches the origin on a fill, so no client
can make an origin build an answer that is then stored for every other viewer of the same key.

Pass-through requests store nothing: they carry the client's end-to-end fields, but their Host and target still
come from the route and the key, never from the client's raw Host or target.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecache.core.headers import HOP_BY_HOP, Headers, connection_tokens, end_to_end, get_all, get_first
from edgecache.core.hop import FIELD as HOP
from edgecache.core.keys import CACHE_OWNED, CacheKey, Varied
from edgecache.core.maxforwards import forwarded as one_less

VIA = "1.1 edgecache"


def via_sent(token: str) -> str:
    """The Via a node's fills and passes carry: VIA with the node's token as a comment (RFC 9110 7.6.3), by which
    a request that comes back to it (a site's origin whose address, or whose name in the node's DNS, is the
    node's own) is told from a viewer's (core.admit.looped)."""
    return f"{VIA} ({token})" if token else VIA


# Fields a client could use to make an origin build a response for another host, scheme or path (cache
# poisoning through unkeyed headers, or a pass-through reaching somewhere it should not): never forwarded.
UNKEYED = (
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",  # the same, as OData and ASP.NET read it
    "x-method-override",
    "forwarded",
)
# Fields in which a client may claim an address (its own, or one an origin trusts): the edge tells the origin the
# client's address in X-Forwarded-For, so a client's claim in another field never reaches it, on a pass or a fill.
CLAIMED_ADDRESS = (
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-forwarded-server",
    # The rest of PHP's usual list of where a client's address is (HTTP_CLIENT_IP, HTTP_X_FORWARDED, ...).
    "client-ip",
    "x-forwarded",
    "forwarded-for",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
)
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")  # RFC 9110 5.1, lower case


def check_forward_field(name: str) -> str:
    """A field a site may send on fills although the key does not hold it (Site.forward_fields), lower-cased.

    Fields the cache sets itself and the fields that name another host, scheme or path can never be one: the
    first would break what a fill asks for, the second would let a client choose what the origin answers.
    """
    lname = name.lower()
    if not lname or not set(lname) <= _TOKEN:
        raise ValueError(f"{name!r} is not a header field name")
    if "_" in lname:  # X_Real_IP reaches an app behind nginx or CGI as X-Real-IP: a spoofing vector
        raise ValueError(
            f"{name!r} has an underscore, which proxies and CGI servers read as a dash (a client could spoof the "
            "dashed field): never forwarded"
        )
    if lname in CACHE_OWNED or lname in (*UNKEYED, *CLAIMED_ADDRESS, "authorization", "cookie", "x-forwarded-for"):
        raise ValueError(f"{name!r} is set by the cache or would change what the origin answers: never forwarded")
    return lname


def unkeyed_fields(names: tuple[str, ...], client: Headers, vary: tuple[str, ...] = ()) -> Headers:
    """The client's values of a site's forward_fields, as sent, in the order the site names them; a field the
    stored answer Varies on is in the key, and fill_request sends it already (normalised)."""
    keyed = {v.lower() for v in vary}
    return tuple((name, value) for name in names if name not in keyed for value in get_all(client, name))


@dataclass(frozen=True, slots=True)
class OriginRequest:
    method: str
    target: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class Validator:
    """The stored copy a fill revalidates: the origin is asked whether it is still current."""

    etag: str | None
    last_modified: str | None


def fill_request(
    key: CacheKey,
    fields: Varied,
    origin_host: str | None,
    byte_range: tuple[int, int] | None = None,
    validator: Validator | None = None,
    unkeyed: Headers = (),
    via: str = VIA,
) -> OriginRequest:
    """The origin request of a fill: `fields` are the Vary'd values of the entry key (keys.keyed_fields), sent as
    normalised there, so the variant computed from what was sent is the variant of the key. `unkeyed` holds
    the only other client fields a fill may carry: those its site names in forward_fields (unkeyed_fields)."""
    headers: list[tuple[str, str]] = [("Host", origin_host or key.host)]
    headers.extend((name, value) for name, value in fields if value is not None)
    if byte_range is not None:
        headers.append(("Range", f"bytes={byte_range[0]}-{byte_range[1]}"))
    if validator is not None:  # both the stored validators (RFC 9111 4.3.1); an origin honours either
        if validator.etag:
            headers.append(("If-None-Match", validator.etag))
        if validator.last_modified:
            headers.append(("If-Modified-Since", validator.last_modified))
    headers.extend(unkeyed)
    headers.append(("Via", via))
    return OriginRequest("GET", key.target, tuple(headers))


# What a pass never sends on of a client's fields: the edge writes them itself. A client's hop field neither, valid
# or not: a node forwarding to a peer adds its own (`extra`).
_NOT_PASSED = frozenset(
    name.lower() for name in ("host", "x-forwarded-for", "expect", "via", HOP, *UNKEYED, *CLAIMED_ADDRESS)
)


def pass_request(
    method: str,
    key: CacheKey,
    client: Headers,
    origin_host: str | None,
    client_ip: str,
    extra: Headers = (),
    via: str = VIA,
) -> OriginRequest:
    """A request whose answer is not stored: the client's end-to-end fields, the key's host and normalised target.

    The target keeps every parameter (only the key leaves some out, and nothing here is stored): a signature or
    a form parameter the cache does not key on still means something to the origin.
    """
    # With '_' for '-' too: CGI, PHP and WSGI servers read X_Forwarded_For as HTTP_X_FORWARDED_FOR, as the real one.
    kept = [
        (k, _length(v) if k.lower() == "content-length" else v)
        for k, v in end_to_end(one_less(method, client))
        if k.lower().replace("_", "-") not in _NOT_PASSED
    ]
    headers = [*kept, ("Host", origin_host or key.host)]
    # Every line, in order: a balancer may add its own after the client's (HAProxy does), and the nearest is last.
    # No `client_ip`: a peer's forward, whose node added its viewer last already (the connection is that node's).
    prior = ", ".join(get_all(client, "x-forwarded-for"))
    forwarded = ", ".join(a for a in (prior, client_ip) if a)
    if forwarded:
        headers.append(("X-Forwarded-For", forwarded))
    prior_via = ", ".join(get_all(client, "via"))
    headers.append(("Via", f"{prior_via}, {via}" if prior_via else via))
    return OriginRequest(method, key.full_target, (*headers, *extra))


def _length(value: str) -> str:
    """A body's length as the edge read it, spelt plainly: `0010` is 10 to llhttp (and to RFC 9112), 8 to a parser
    that reads a leading zero as octal, 1 to one that keeps 20 digits of `000000000000000000010`. The body framed
    by one reading and read by another would leave its tail on a pooled origin connection as the next request."""
    digits = value.strip(" \t")
    return str(int(digits)) if digits.isascii() and digits.isdigit() else value


def relayed_fields(upstream: Headers, status_field: str) -> list[tuple[str, str]]:
    """The fields a node passes on of an upstream's answer (an origin's on a pass-through, the owner's on a forward):
    its end-to-end fields, with this node added to Via and this node's Cache-Status entry after the upstream's."""
    return relayed_named(upstream, status_field)[0]


def relayed_named(upstream: Headers, status_field: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """relayed_fields(), and the first value of each field it gives by its lower-case name: every forward's answer
    goes through here, so each name is lowered once, in one pass over the fields, and one set lookup sets apart the
    few it does not pass on as they are. The fields a Connection field names are dropped after that pass (a peer's
    answer has none: it is rare), wherever they stood."""
    fields: list[tuple[str, str]] = []
    names: dict[str, str] = {}
    vias: list[str] = []
    prior: list[str] = []
    connection = False
    for field in upstream:
        name = field[0].lower()
        if name in _NOT_AS_THEY_ARE:
            if name == "via":
                vias.append(field[1])
            elif name == "cache-status":
                prior.append(field[1])
            else:
                connection = connection or name == "connection"
        else:
            fields.append(field)
            if name not in names:
                names[name] = field[1]
    if connection and (named := connection_tokens(upstream)):
        fields = [f for f in fields if f[0].lower() not in named]
        names = {k: v for k, v in names.items() if k not in named}
    via = ", ".join(vias)
    fields.append(("Via", f"{via}, {VIA}" if via else VIA))
    statuses = ", ".join(prior)
    fields.append(("Cache-Status", f"{statuses}, {status_field}" if statuses else status_field))
    names["via"], names["cache-status"] = fields[-2][1], fields[-1][1]
    return fields, names


_JOINED = frozenset({"via", "cache-status"})  # joined with this node's entry, even when a Connection field names them
_NOT_AS_THEY_ARE = HOP_BY_HOP | _JOINED


def must_pass(client: Headers) -> str | None:
    """Why a GET or HEAD cannot be a fill (then it is passed through, nothing stored), or None.

    Dropping these fields would change what is asked: a request with credentials made anonymous would be answered
    for someone else (RFC 9111 3.5 lets a shared cache store such answers only when the origin says so, and the
    origin cannot say so about a request it never saw).
    """
    if get_first(client, "authorization") is not None:
        return "authorization"
    return None
