"""What the cache knows about one stored object, and how an origin response to a fill is judged.

An object is its metadata plus fixed-size slices named (entry key, version, index). The version comes from the
validators, so slices of two versions can never be assembled into one body: a slice fetched later must carry
the same version or it is refused.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from edgecache.core import ranges
from edgecache.core.headers import Headers, end_to_end, get_first, list_values
from edgecache.core.httpdate import strong_last_modified

# Framing fields describe one message, not the stored representation: they are recomputed on every response.
FRAMING = ("content-length", "content-range", "transfer-encoding", "accept-ranges")


def version_of(headers: Headers, length: int | None) -> str | None:
    """A strong ETag, else a strong Last-Modified with the length (and the weak ETag, if any); None when nothing
    can tell two versions apart.

    A weak ETag alone does not name bytes (RFC 9110 8.8.1: two versions may share it), so it never makes slices
    combinable; but a changed one says the bytes may have changed even where Last-Modified and the length did not
    (an origin that rewrites content within the same second), so it is part of the version when it is there.
    """
    etag = (get_first(headers, "etag") or "").strip()
    if etag.startswith('"'):
        return "e:" + etag
    lm = get_first(headers, "last-modified")
    # Only a strong one (RFC 9110 8.8.2.2: well before the Date): one the Date is near may name two versions made
    # within that second, and parts are combined under a strong validator only (15.3.7.3).
    if lm and length is not None and strong_last_modified(lm, get_first(headers, "date")) is not None:
        return f"l:{lm.strip()}:{length}" + (f":{etag}" if etag else "")
    return None


def versioned(meta: ObjectMeta) -> bool:
    """Whether a stored copy has a version (version_of), so that a fill may bring the slices it lacks: an answer
    without one is a copy of its own (fillhead._copy), whose bytes are never served for another (same_bytes)."""
    return not meta.version.startswith("u:")


def weak_twins(a: Headers, b: Headers) -> bool:
    """Whether two answers' ETags are one tag, weak in one and strong in the other (`W/"x"` and `"x"`): an origin
    that answers some ranges of an object with the weak form and others with the strong (two backends, or a
    compressing layer in front of some of them)."""
    x, y = (get_first(a, "etag") or "").strip(), (get_first(b, "etag") or "").strip()
    tag = x.removeprefix("W/")
    return x != y and tag.startswith('"') and tag == y.removeprefix("W/")


def same_last_modified(stored: Headers, fresh: Headers) -> bool:
    """Whether a response's Last-Modified agrees with a stored copy's: unless both are strong and name different
    times, they do.

    A strong ETag names the version, but an origin that reuses one for new bytes of the same length and dates
    them anew gives two validators that disagree: its slices are another copy's, never combined with the stored.
    A Last-Modified that is not strong (one an origin dates every answer with, the Date's own time) tells nothing.
    """
    when = strong_last_modified(get_first(fresh, "last-modified"), get_first(fresh, "date"))
    stored_when = strong_last_modified(get_first(stored, "last-modified"), get_first(stored, "date"))
    return when is None or stored_when is None or when == stored_when


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    status: int
    headers: Headers  # stored response fields, without hop-by-hop and framing fields
    length: int  # bytes of the whole representation
    version: str
    whole: bool  # always fill the whole object in one request (no validator, Range ignored, not a 200)
    request_time: float
    response_time: float
    slice_size: int
    vary: tuple[str, ...] = ()
    # Names this copy's slices. A new copy of an object (after a miss, invalidation or purge) gets a new token,
    # so slices of an earlier copy are never read for it, even when an origin reuses validators.
    token: str = ""

    @property
    def slice_version(self) -> str:
        return f"{self.version}#{self.token}"

    @property
    def slice_count(self) -> int:
        return -(-self.length // self.slice_size)

    def slice_length(self, index: int) -> int:
        return ranges.slice_length(index, self.slice_size, self.length)

    @property
    def etag(self) -> str | None:
        return get_first(self.headers, "etag")

    @property
    def last_modified(self) -> str | None:
        return get_first(self.headers, "last-modified")

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "status": self.status,
            "headers": [list(h) for h in self.headers],
            "length": self.length,
            "version": self.version,
            "whole": self.whole,
            "request_time": self.request_time,
            "response_time": self.response_time,
            "slice_size": self.slice_size,
            "vary": list(self.vary),
            "token": self.token,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ObjectMeta | None:
        """None for anything that is not a well-formed record: a damaged entry is a miss, never a crash."""
        try:
            d = json.loads(data)
            return cls(
                status=int(d["status"]),
                headers=shared_fields(tuple((str(k), str(v)) for k, v in d["headers"])),
                length=int(d["length"]),
                version=str(d["version"]),
                whole=bool(d["whole"]),
                request_time=float(d["request_time"]),
                response_time=float(d["response_time"]),
                slice_size=int(d["slice_size"]),
                vary=tuple(str(v) for v in d.get("vary", ())),
                token=str(d.get("token", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def same_bytes(a: ObjectMeta, b: ObjectMeta) -> bool:
    """Whether a slice of copy `b` may be served to a reader of copy `a`: the same copy, or two copies of one strong
    ETag (RFC 9110 8.8.3: it names the bytes) with the same status and known length, whose Last-Modified do not
    disagree. A weak ETag, a Last-Modified alone or no validator names no bytes: two copies under them share none.

    Two copies of the same bytes arise when a copy's metadata is lost while it is read (evicted from both tiers,
    or another worker's copy read back from the shared disk): the next miss names a new copy (a new token)."""
    if a.slice_version == b.slice_version:
        return True
    return (
        a.version.startswith("e:")
        and (a.version, a.status, a.length) == (b.version, b.status, b.length)
        and a.length >= 0
        and same_last_modified(a.headers, b.headers)
    )


# Fields whose values repeat from object to object: one string for all of them, not one per object held in memory
# (the metadata of 16,384 objects is kept per process; these are most of its bytes).
_REPEATING = frozenset(
    {"server", "content-type", "cache-control", "accept-ranges", "vary", "content-encoding", "via", "x-cache"}
)


def shared_fields(headers: Headers) -> Headers:
    """The same fields, with every name and the repeating values shared (interned) across objects."""
    out = []
    for k, v in headers:
        name = sys.intern(str(k))
        out.append((name, sys.intern(str(v)) if len(v) <= 128 and name.lower() in _REPEATING else v))
    return tuple(out)


def stored_headers(headers: Headers, status: int = 206) -> Headers:
    """Without hop-by-hop and framing fields; a Content-Range on anything but a 206 is the origin's own field
    (it does not frame this message), so it is stored as sent."""
    drop = FRAMING if status == 206 else tuple(f for f in FRAMING if f != "content-range")
    return end_to_end(headers, drop=drop)


def vary_names(headers: Headers) -> tuple[str, ...]:
    return tuple(sorted({v.lower() for v in list_values(headers, "vary")}))


# --- judging an origin response to a fill -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partial:
    """A 206 for the aligned range we asked for: the body holds bytes first..last of a `length`-byte object."""

    first: int
    last: int
    length: int


@dataclass(frozen=True, slots=True)
class Whole:
    """A 200: the whole object (length None when the origin did not say); the origin ignored our Range."""

    length: int | None


@dataclass(frozen=True, slots=True)
class NotModified:
    pass


@dataclass(frozen=True, slots=True)
class Other:
    """Any other status (404, 301, 5xx...): one body, never sliced or ranged."""

    length: int | None


@dataclass(frozen=True, slots=True)
class Refused:
    """The response contradicts itself or our request; nothing of it may be served or stored."""

    reason: str


Judgement = Partial | Whole | NotModified | Other | Refused


def _content_length(headers: Headers) -> int | Refused | None:
    values = {v.strip() for v in list_values(headers, "content-length")}
    if not values:
        return None
    if len(values) > 1:
        return Refused("conflicting Content-Length")
    (v,) = values
    if not v.isdigit() or len(v) > 18:
        return Refused("invalid Content-Length")
    return int(v)


def judge(status: int, headers: Headers, asked: ranges.ByteRange | None) -> Judgement:
    """Classify the origin's answer to a fill; `asked` is the aligned range requested (None: no Range sent)."""
    if status == 204:  # ended by its head whatever its fields say (RFC 9112 6.3 rule 1): a Content-Length is no length
        return Other(None)
    clen = _content_length(headers)
    if isinstance(clen, Refused):
        return clen
    if status == 304:
        return NotModified()
    if status == 200:
        return Whole(clen)
    if status == 416 and asked is not None:
        # The fill's own range, not the client's: an empty object's answer (S3 and nginx give 416 to bytes=0-N
        # of zero bytes). Stored, it would answer every later request of the object, unranged ones too.
        return Refused("416 to the range a fill asked for")
    if status != 206:
        return Other(clen)
    cr = ranges.parse_content_range(get_first(headers, "content-range"))
    if asked is None:
        # The whole representation in a 206 (some stores answer every GET so) is the whole body: a fill of the
        # whole object takes it as the 200 it asked for. Any other part of it answers nothing asked.
        if cr is None or cr.first != 0 or cr.length is None or cr.last != cr.length - 1:
            return Refused("206 to a request without Range")
        asked = ranges.ByteRange(0, cr.length - 1)
    if cr is None or cr.first is None or cr.last is None or cr.length is None:
        return Refused("206 without a usable Content-Range")
    if cr.first != asked.first or cr.last != min(asked.last, cr.length - 1):
        return Refused(f"206 for bytes {cr.first}-{cr.last}, asked for {asked.first}-{asked.last}")
    if clen is not None and clen != cr.last - cr.first + 1:
        return Refused("Content-Length disagrees with Content-Range")
    return Partial(cr.first, cr.last, cr.length)
