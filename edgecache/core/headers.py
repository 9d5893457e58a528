"""Header lists as plain tuples, and the RFC 9110 list syntax.

The core never sees aiohttp's CIMultiDict: headers cross into it as a tuple of (name, value) pairs in the
order they arrived, so pure code can be tested with literals and stored entries are plain data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

Headers = tuple[tuple[str, str], ...]

# RFC 9110 7.6.1 and RFC 9112: connection-specific fields never forwarded and never stored.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def as_sent(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Fields as read off the wire, as their sender wrote them: each name in its own case (aiohttp's `headers` give
    the names it knows in its own: ETag as Etag, set-cookie as Set-Cookie), and a value's bytes that are not UTF-8
    as lone surrogates (surrogateescape, as aiohttp decodes them), which proxy.encode and proxy.exact write back."""
    return tuple([(k.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for k, v in raw])


def get_all(headers: Headers, name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def get_first(headers: Headers, name: str) -> str | None:
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


def has(headers: Headers, name: str) -> bool:
    return get_first(headers, name) is not None


def split_list(value: str) -> Iterator[str]:
    """Split one field value on commas outside quoted strings; empty elements are dropped (RFC 9110 5.6.1)."""
    if '"' not in value:  # no quoted string: every comma separates (most values; this is on every request's path)
        yield from filter(None, (item.strip(" \t") for item in value.split(",")))
        return
    start = 0
    in_quote = False
    escaped = False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif ch == "\\" and in_quote:
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
        elif ch == "," and not in_quote:
            item = value[start:i].strip(" \t")
            if item:
                yield item
            start = i + 1
    item = value[start:].strip(" \t")
    if item:
        yield item


def list_values(headers: Headers, name: str) -> list[str]:
    """All elements of a list-valued field, across repeated field lines."""
    out: list[str] = []
    for v in get_all(headers, name):
        out.extend(split_list(v))
    return out


def connection_tokens(headers: Headers) -> frozenset[str]:
    return frozenset(t.lower() for t in list_values(headers, "connection"))


def end_to_end(headers: Headers, drop: Iterable[str] = ()) -> Headers:
    """Remove hop-by-hop fields, those named in Connection, and any extra names in `drop`."""
    banned = HOP_BY_HOP | connection_tokens(headers) | {d.lower() for d in drop}
    return tuple((k, v) for k, v in headers if k.lower() not in banned)


def replace(headers: Headers, name: str, value: str | None) -> Headers:
    """Drop every `name` field and, unless value is None, append one with `value`."""
    lname = name.lower()
    kept = tuple((k, v) for k, v in headers if k.lower() != lname)
    return kept if value is None else (*kept, (name, value))
