"""Cache keys: one normal form of a request target, so equal resources share one entry and tricks do not.

The origin is always asked for the key's target, never the raw one: what is keyed is what is fetched, so an
origin that reads a path, a host or a query differently from us cannot be used to poison an entry. The request
a fill sends is built from the key alone (core/forward.py); this module decides what the key holds.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import unquote

from edgecache.core.headers import HOP_BY_HOP, Headers, get_all, split_list
from edgecache.core.hop import FIELD as CLUSTER_HOP

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})?")  # a '%' without two hex digits after it is a stray one
# Visible ASCII that may stand in a request target (RFC 3986 unreserved, sub-delims, ":@/?%", and a few more
# that browsers send raw); everything else, controls and spaces above all, is refused (matched whole: `$` would
# let a trailing newline through).
_TARGET_OK = re.compile(r"[!-~]*")
# What some origins take for '/' in a path although RFC 3986 does not (nginx decodes %2F, IIS reads '\\'); and a
# segment's ';' parameters, which Tomcat and Jetty drop: a '..' set off by them is a dot-segment there, resolved
# after our key was made.
_ANY_SLASH = re.compile(r"/|%2F|%5C|\\")
MAX_TARGET = 8192


class BadTarget(ValueError):
    """The request target cannot be made into a key; the message is the reason for the 400."""


@dataclass(frozen=True, slots=True)
class CacheKey:
    primary: str  # site, host and normalised target: the unit of routing and purge
    host: str  # normalised host (no port, lower case, no trailing dot): the Host a fill sends without origin_host
    path: str  # normalised path
    query: str  # the keyed query: the kept parameters in key order, each item as normalised ("" when none)
    full_query: str = ""  # every parameter, normalised: only pass-through sends it, since nothing of it is stored
    # The parameters the site never keys nor sends anywhere ("!name" in its key_query: a signed URL's token),
    # normalised, as sent: core.signing checks them.
    unkeyed: str = ""

    @property
    def target(self) -> str:
        """What a fill asks the origin for: the key's path and the key's query, nothing else."""
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def full_target(self) -> str:
        return f"{self.path}?{self.full_query}" if self.full_query else self.path


def _normalise_pct(part: str) -> str:
    """Decode %XX of unreserved characters and upper-case the rest (RFC 3986 6.2.2.1-2); refuse %00.

    A stray '%' (not followed by two hex digits) becomes %25, what it means to a lenient reader. Left alone, it
    could join with the digits a decoding brings next to it: '/%%34%31' would become '/%41', which normalises
    again to '/A', so the key would change each time the target is normalised (a forwarded or purged target is).
    """

    def fix(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "%25"
        ch = chr(int(m.group(1), 16))
        if ch == "\x00":
            raise BadTarget("encoded NUL in the request target")
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    return _PCT.sub(fix, part)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, so '/a/./b/../c' and '/c/..%2e/c' name what they really name, never above '/'."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


def normalise_target(target: str) -> tuple[str, str]:
    """Origin-form target -> (path, query), normalised. Raises BadTarget with the reason."""
    if len(target) > MAX_TARGET:
        raise BadTarget("request target too long")
    if not target.startswith("/"):
        raise BadTarget("request target must be origin-form (start with '/')")
    if not _TARGET_OK.fullmatch(target):
        raise BadTarget("request target has control characters or spaces")
    target = target.split("#", 1)[0]
    path, _, query = target.partition("?")
    path = remove_dot_segments(_normalise_pct(path))
    if ".." in path and any(piece.partition(";")[0] == ".." for piece in _ANY_SLASH.split(path)):
        # '/set/..%2F..%2Fother' and '/set/..;/..;/other' are under '/set/' to us, and '/other' to such an origin:
        # out of a signed prefix, or above the origin URL's own path. No real object is named this way.
        raise BadTarget("request target has a '..' segment set off by %2F, %5C, a backslash or ';'")
    query = _normalise_pct(query)
    if len(path) + len(query) + 1 > MAX_TARGET:  # stray '%'s grew into %25s: the key's target is refused too
        raise BadTarget("request target too long")
    return path, query


def _name(item: str) -> str:
    return item.partition("=")[0]


def never_keyed(keep: Iterable[str]) -> frozenset[str]:
    """The names a key_query marks "!name": never keyed, not even under "*", and never sent to an origin."""
    return frozenset(k[1:] for k in keep if k.startswith("!"))


def without_params(target: str, names: frozenset[str]) -> str:
    """`target` (or a URL) as sent, less the query parameters named in `names`, however their names are
    percent-encoded: what the access log writes of a Referer, and of the target of a request refused before it had
    a key, which would have dropped its site's never-keyed parameters (a keyed request is logged by its key's
    target, which never holds them). Nothing here raises."""
    if not names:
        return target
    path, sep, query = target.partition("?")
    if not sep or ("%" not in query and not any(name in query for name in names)):
        return target
    kept = [item for item in query.split("&") if _plain_name(item) not in names]
    return f"{path}?{'&'.join(kept)}" if kept else path


def _plain_name(item: str) -> str:
    name = item.partition("=")[0]
    return unquote(name) if "%" in name else name  # unquote's cost only where it can change the name


def keyed_query(query: str, keep: Iterable[str]) -> str:
    """The part of the query that is in the key, and so the query a fill sends: the kept items, sorted by name.

    The sort is stable and each item is kept byte for byte: '?itag=2&itag=1' and '?itag=1&itag=2' are different
    requests to an origin that reads the first (or the last) value, and so are 'a' and 'a='. Only the order of
    different names is given up, which no origin we know of reads. Empty items ('&&') carry nothing and go.
    """
    kept = set(keep)
    never = never_keyed(kept)
    items = [i for i in query.split("&") if i and _name(i) not in never and ("*" in kept or _name(i) in kept)]
    return "&".join(sorted(items, key=_name))


_PRIMARY = re.compile(r"(.*?)\|([^|/]*)\|(/[^?]*)(?:\?.*)?", re.S)  # make_key's site|host|path[?query]


def make_key(site: str, host: str, target: str, keep_query: Iterable[str]) -> CacheKey:
    """`host` is already normalised (route.normalise_host): the key never holds a port or a trailing dot."""
    path, query = normalise_target(target)
    host = host.lower()
    keep_query = tuple(keep_query)
    kq = keyed_query(query, keep_query)
    primary = f"{site}|{host}|{path}" + (f"?{kq}" if kq else "")
    unkeyed = ""
    if never := never_keyed(keep_query):
        items = query.split("&")
        unkeyed = "&".join(i for i in items if _name(i) in never)
        query = "&".join(i for i in items if _name(i) not in never)
    return CacheKey(primary=primary, host=host, path=path, query=kq, full_query=query, unkeyed=unkeyed)


# Fields whose values are case-insensitive tokens (RFC 9110 12.5): 'eN' and 'en' select the same variant.
_CASELESS = frozenset({"accept", "accept-charset", "accept-encoding", "accept-language"})
# Fields a fill sets itself (Host from the key, its own Range and validators, Via) or that belong to one
# connection: the client's value never reaches the origin, so a Vary naming one cannot select by it. Every
# request has the same value for them here, the one the fill sends.
CACHE_OWNED = frozenset(
    {
        "host",
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "via",
        "expect",
        "content-length",
        CLUSTER_HOP.lower(),  # between the nodes of a cluster only (core.hop)
        *HOP_BY_HOP,
    }
)

# The Vary'd request fields as a fill sends them: (lower-case name, normalised value), value None when the
# request has no such field (absent and empty are different requests: RFC 9110 12.5.3, Accept-Encoding).
Varied = tuple[tuple[str, str | None], ...]


def varied(vary: tuple[str, ...], request: Headers) -> Varied:
    """The secondary key of RFC 9111 4.1: each Vary'd field's list members, trimmed, across all its lines.

    Order is kept: 'en, de' and 'de, en' state different preferences. The values are normalised so that
    normalising the fields a fill sent gives the same values again: what is stored under a variant is the
    answer to exactly the fields that variant names.
    """
    out: list[tuple[str, str | None]] = []
    for name in vary:
        lname = name.lower()
        lines = get_all(request, name)
        if lname in CACHE_OWNED or not lines:
            out.append((lname, None))
            continue
        value = ",".join(" ".join(m.split()) for v in lines for m in split_list(_sendable(v)))
        out.append((lname, value.lower() if lname in _CASELESS else value))
    return tuple(out)


def _sendable(value: str) -> str:
    """`value` as a fill can send it: without the lone surrogates that stand for a client's bytes that were not UTF-8
    (aiohttp decodes heads with surrogateescape), which aiohttp's client writer leaves out. Kept, they made a variant
    the origin was never asked for: `phone\\xff` stored the answer to `phone` under a key of its own."""
    return value if value.isascii() else value.encode("utf-8", "ignore").decode("utf-8")


def variant(vary: tuple[str, ...], request: Headers) -> str:
    """The variant as text, for the entry key: 'name=value' per Vary'd field, 'name' alone when absent."""
    return "\n".join(name if value is None else f"{name}={value}" for name, value in varied(vary, request))


def digest(text: str) -> str:
    """A stable, short name for storage: the same on every worker and node (never Python's salted hash()).

    Text with surrogates that surrogateescape cannot encode (any outside U+DC80-U+DCFF) is hashed as
    surrogatepass bytes under another blake2b personalisation, so it can never collide with encodable text.
    """
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, person=b"surrogates").hexdigest()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


BUCKET_MARK = "~"  # begins a bucket's generation; an invalidation's is hex (secrets.token_hex)


def bucket_generation(dropped: int) -> str:
    """The generation of a primary without a record on its disk, whose bucket has seen `dropped` records dropped
    (storage.diskrecords): none for none, so a bucket never dropped from keys its objects as before buckets were."""
    return f"{BUCKET_MARK}{dropped}" if dropped else ""


@dataclass(frozen=True, slots=True)
class PrimaryRecord:
    """What is known of a primary key: its generation (changed by invalidation and purge, so every variant and
    slice stored before is out of reach at once) and the request fields its responses Vary on."""

    generation: str = ""
    vary: tuple[str, ...] = ()
    soft_before: float = 0.0  # a soft purge: responses stored before this time are stale

    @property
    def hides(self) -> bool:
        """Would a look-up without this record find copies it hides (an invalidation's generation, a soft purge)?
        Not one whose generation is its bucket's (bucket_generation): without it the bucket gives that generation or
        a later one, and a later one finds nothing stored before."""
        return bool(self.soft_before) or (bool(self.generation) and not self.generation.startswith(BUCKET_MARK))

    def to_bytes(self) -> bytes:
        return "\n".join((f"{self.generation} {self.soft_before!r}", *self.vary)).encode("latin-1", "replace")

    @classmethod
    def from_bytes(cls, data: bytes) -> PrimaryRecord:
        head, *vary = data.decode("latin-1").split("\n")
        generation, _, soft = head.partition(" ")
        try:
            soft_before = float(soft) if soft else 0.0
        except ValueError:
            soft_before = 0.0
        return cls(generation, tuple(v for v in vary if v), soft_before)

    def named(self, vary: tuple[str, ...] | None) -> PrimaryRecord:
        """The record a request is keyed under once an answer to it named `vary` (None: none did yet): this one, or,
        when that answer was not stored (private, say) and this record names another Vary, one pointing where it
        points. The full handler's lookup (EdgeHandler._look_up) and the fast path's (lookup.find_cold)."""
        return self if vary is None or vary == self.vary else replace(self, vary=vary)


def entry_key(primary: str, record: PrimaryRecord, headers: Headers, scope: str = "") -> str:
    """Where one response is stored: the primary key, the generations of the purge scopes above it and of the
    primary itself, and the request's values of the fields the response Varies on."""
    key = primary
    if scope:
        key += "\n@" + scope
    if record.generation:
        key += "\n#" + record.generation
    if record.vary:
        key += "\n" + variant(record.vary, headers)
    return key


def entry_parts(key: str) -> tuple[str, str, str]:
    """What entry_key() made `key` of: its primary key, purge scope and generation ("" where it had none)."""
    primary, scope, generation, _ = _split_entry(key)
    return primary, scope, generation


def keyed_fields(key: str) -> Varied:
    """The Vary'd fields entry_key() put in `key`, as varied() gave them: what every fill of the copy stored under
    it sends, whatever Vary the request that reads it was decided with (a copy extended with other fields joins
    another variant's bytes to its own, under one ETag when the origin gives every variant the same)."""
    return tuple(
        (name, value if sep else None) for name, sep, value in (x.partition("=") for x in _split_entry(key)[3])
    )


def _split_entry(key: str) -> tuple[str, str, str, list[str]]:
    """entry_key()'s parts: primary, scope, generation, and its variant's lines ("name=value", or "name" for a field
    the request did not have). A scope or generation line holds no "=" (a field present does); values hold no
    newline (varied() keeps no whitespace but single spaces)."""
    primary, _, rest = key.partition("\n")
    lines = rest.split("\n") if rest else []
    marked = []
    for mark in ("@", "#"):
        found = bool(lines) and lines[0].startswith(mark) and "=" not in lines[0]
        marked.append(lines.pop(0)[1:] if found else "")
    return primary, marked[0], marked[1], lines


def primary_parts(primary: str) -> tuple[str, str, str] | None:
    """The site, host and path make_key() made `primary` of (its query aside)."""
    found = _PRIMARY.fullmatch(primary)
    return (found[1], found[2], found[3]) if found is not None else None
