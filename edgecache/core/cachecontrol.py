"""Cache-Control (RFC 9111 5.2) and Pragma, parsed once into a frozen value. Never raises on input.

Choices where RFC 9111 lets a cache choose (4.2.1, "either the first occurrence should be used or the response
should be considered stale"; invalid freshness information is "encouraged" to mean stale):
- a max-age whose argument is not a non-negative integer is kept as max_age=0 (stale), so it still overrides
  Expires; other invalid delta directives are dropped and listed in `invalid` (freshness.py reads s-maxage there);
- repeated delta directives keep the smallest value (the most restrictive), whatever their order;
- repeated qualified no-cache="..." / private="..." accumulate their field names.
Directive names are case-insensitive; arguments may be quoted (5.2: senders should not quote, recipients accept).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from edgecache.core.headers import Headers, get_all, list_values, split_list

DELTA_MAX = 2**31  # RFC 9111 1.2.2: larger delta-seconds are taken as this


@dataclass(frozen=True, slots=True)
class CacheControl:
    max_age: int | None = None
    s_maxage: int | None = None
    no_store: bool = False
    no_cache: bool = False
    no_cache_fields: tuple[str, ...] = ()
    private: bool = False
    private_fields: tuple[str, ...] = ()
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    immutable: bool = False
    no_transform: bool = False
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    max_stale: int | None = None
    max_stale_any: bool = False
    min_fresh: int | None = None
    only_if_cached: bool = False
    invalid: tuple[str, ...] = ()  # delta directives whose argument was unusable


def _delta(value: str | None) -> int | None:
    """delta-seconds, quoted or not; None when absent or not a non-negative integer."""
    if value is None:
        return None
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        v = v[1:-1]
    if not v.isdigit() or not v.isascii():
        return None
    # Compare lengths before int(): Python refuses to convert strings of over 4300 digits (ValueError).
    v = v.lstrip("0") or "0"
    return DELTA_MAX if len(v) > 10 else min(int(v), DELTA_MAX)


def _fields(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    v = value.strip().strip('"')
    return tuple(sorted({f.strip().lower() for f in v.split(",") if f.strip()}))


_DELTAS = {
    "max-age": "max_age",
    "s-maxage": "s_maxage",
    "stale-while-revalidate": "stale_while_revalidate",
    "stale-if-error": "stale_if_error",
    "min-fresh": "min_fresh",
}
_ALL_DELTAS = {**_DELTAS, "max-stale": "max_stale"}  # max-stale may also come bare (handled before)
_FLAGS = {
    "no-store": "no_store",
    "public": "public",
    "must-revalidate": "must_revalidate",
    "proxy-revalidate": "proxy_revalidate",
    "must-understand": "must_understand",
    "immutable": "immutable",
    "no-transform": "no_transform",
    "only-if-cached": "only_if_cached",
}


def parse_cache_control(headers: Headers, field: str = "cache-control") -> CacheControl:
    """Every field line of `field` (Cache-Control, or a targeted field such as CDN-Cache-Control), combined."""
    return _parse(tuple(get_all(headers, field)))


@functools.lru_cache(maxsize=4096)  # keyed by the field values: a stored response's directives recur on every hit
def _parse(lines: tuple[str, ...]) -> CacheControl:
    values: dict[str, object] = {}
    invalid: list[str] = []
    for item in (member for line in lines for member in split_list(line)):
        name, eq, arg = item.partition("=")
        name = name.strip().lower()
        if not _apply(values, name, arg if eq else None):
            invalid.append(name)
    return CacheControl(**values, invalid=tuple(invalid))  # type: ignore[arg-type]


def _apply(values: dict[str, object], name: str, argument: str | None) -> bool:
    """Record one directive in `values`; False when its argument is unusable. Unknown directives are ignored (5.2.3)."""
    if name in _FLAGS:
        values[_FLAGS[name]] = True
    elif name in ("no-cache", "private"):
        # Qualified forms (5.2.2.4, 5.2.2.7) name fields; an empty or absent list is the unqualified directive.
        attr = name.replace("-", "_")
        named = _fields(argument)
        if named:
            prior = values.get(f"{attr}_fields")
            values[f"{attr}_fields"] = tuple(sorted({*named, *(prior if isinstance(prior, tuple) else ())}))
        else:
            values[attr] = True
    elif name == "max-stale" and argument is None:
        values["max_stale_any"] = True  # 5.2.1.2: no argument, any staleness
    elif name in _ALL_DELTAS:
        delta = _delta(argument)
        if delta is None:
            if name == "max-age":
                values["max_age"] = 0  # an unusable max-age makes the response stale (4.2.1)
            return False
        attr = _ALL_DELTAS[name]
        prior = values.get(attr)
        # Conflicting duplicates: the most restrictive wins, the largest for min-fresh, the smallest otherwise.
        pick = max if name == "min-fresh" else min
        values[attr] = pick(prior, delta) if isinstance(prior, int) else delta
    return True


def parse_pragma_no_cache(headers: Headers) -> bool:
    """Pragma: no-cache counts only for requests without Cache-Control (RFC 9111 5.4)."""
    if get_all(headers, "cache-control"):
        return False
    return any(v.strip().lower() == "no-cache" for v in list_values(headers, "pragma"))


# RFC 9213 fields are Structured Field dictionaries (RFC 8941): a field that does not parse as one, or whose
# delta directives are not integers, is ignored whole. Structured Fields are ASCII (RFC 8941 4.2): the patterns
# are matched whole (fullmatch) with re.ASCII, so Unicode digits and a trailing newline fail, as they must.
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*", re.ASCII)
_SF_BARE = re.compile(
    r"(?:-?\d{1,15}(?:\.\d{1,3})?"  # integer or decimal
    r'|"[\x20-\x21\x23-\x5b\x5d-\x7e]*(?:\\["\\][\x20-\x21\x23-\x5b\x5d-\x7e]*)*"'  # string
    r"|[A-Za-z*][!#$%&'*+\-.^_`|~:/A-Za-z0-9]*"  # token
    r"|\?[01]|:[A-Za-z0-9+/=]*:)",  # boolean, byte sequence
    re.ASCII,
)
_SF_INTEGER = re.compile(r"\d{1,15}", re.ASCII)


def valid_sf_directives(values: list[str]) -> bool:
    for member in split_list(",".join(values)):
        item, *params = member.split(";")
        key, eq, value = item.strip(" \t").partition("=")
        if not _SF_KEY.fullmatch(key) or (eq and not _SF_BARE.fullmatch(value)):
            return False
        if key in _DELTAS and not (eq and _SF_INTEGER.fullmatch(value)):
            return False
        for p in params:
            pk, peq, pv = p.strip(" \t").partition("=")
            if not _SF_KEY.fullmatch(pk) or (peq and not _SF_BARE.fullmatch(pv)):
                return False
    return True
