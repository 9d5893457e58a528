"""Client conditional requests answered by the cache (RFC 9110 13.1-13.2), evaluated on stored validators."""

from __future__ import annotations

from edgecache.core.headers import Headers, get_first, list_values
from edgecache.core.httpdate import parse_http_date as _date


def _opaque(tag: str) -> str:
    """The tag without W/ and quotes: origins that send unquoted tags still compare equal to themselves."""
    tag = tag.strip()
    tag = tag[2:] if tag.startswith("W/") else tag
    return tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag


def weak_match(a: str, b: str) -> bool:
    """RFC 9110 8.8.3.2's weak comparison: the opaque tags are the same, W/ or not."""
    return _opaque(a) == _opaque(b)


def strong_match(a: str, b: str) -> bool:
    """RFC 9110 8.8.3.2's strong comparison: neither is weak, and they are the same."""
    return not a.startswith("W/") and not b.startswith("W/") and a.strip() == b.strip()


def not_modified(request: Headers, etag: str | None, last_modified: str | None, date: str | None = None) -> bool:
    """True when a GET/HEAD should be answered 304 from the stored validators.

    If-None-Match uses weak comparison (13.1.2) and, when present, If-Modified-Since is ignored (13.2.2 step 3).
    `*` matches the stored representation, with an ETag or not. Without Last-Modified, the stored Date stands in
    for it (RFC 9111 4.3.2).
    """
    inm = list_values(request, "if-none-match")
    if inm:
        if "*" in inm:
            return True
        return etag is not None and any(weak_match(etag, t) for t in inm)
    ims = _date(get_first(request, "if-modified-since"))
    lm = _date(last_modified) if last_modified else _date(date)
    return ims is not None and lm is not None and lm <= ims


def precondition_failed(request: Headers, etag: str | None, last_modified: str | None) -> bool:
    """If-Match (strong comparison) or If-Unmodified-Since fails against what is stored (13.1.1, 13.1.4). `*`
    holds for any stored representation, with an ETag or not: "the condition is true if the origin server has a
    current representation for the target resource"."""
    im = list_values(request, "if-match")
    if im:
        if "*" in im:
            return False
        return etag is None or not any(strong_match(etag, t) for t in im)
    ius = _date(get_first(request, "if-unmodified-since"))
    lm = _date(last_modified) if last_modified else None
    # Without a modification date the field is ignored: "A recipient MUST ignore If-Unmodified-Since if the
    # resource does not have a modification date available" (13.1.4).
    return ius is not None and lm is not None and lm > ius


def validates(request: Headers) -> bool:
    """Does the request carry a validator of its own (If-None-Match, If-Modified-Since)?"""
    return any(get_first(request, h) is not None for h in ("if-none-match", "if-modified-since"))
