"""Authenticated hops: the field a node adds when it forwards a request to the object's owner.

The owner takes two things on that field's word: serve the request here and never forward it again (which is
what keeps a request from looping between nodes that briefly disagree about who is up), and the viewer was
judged already (site ACL and rate limit, by the node the viewer connected to). So the field must be one that
only a node can write: an HMAC-SHA256, with the key the nodes share, over the forwarding node, the time, the
request id, the viewer's address, whether it is a failover and whether it is a look-aside, and over the request
it rides on (method and cache key), so a copy cannot be moved to another object, and is worthless after MAX_SKEW
seconds. A look-aside (`la=1`, written only when set, so every other field reads as before) is the owner asking
the previous owner for what it holds: answer from the cache only, never fill, never forward (core.lookaside).

Anything else (absent, repeated, malformed, too long, old, forged, another request's) is no hop at all: the
request is then an ordinary client request. Pure: `now` is a parameter; nothing here raises on client input.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

FIELD = "Edgecache-Hop"
# Clocks of the nodes are NTP-synchronised to well within this; a captured field is replayable only this long.
MAX_SKEW = 30.0
MAX_LENGTH = 400  # far above any field a node writes (about 150 characters): longer is junk, refused unparsed
MIN_KEY = 32  # characters of a cluster key (`openssl rand -hex 32` gives 64)
# Node ids, request ids and addresses (IPv4, IPv6 with a zone, "-"): never ';', '=', ',' or white space.
_TOKEN = re.compile(r"[A-Za-z0-9_.:\[\]%-]{1,80}", re.ASCII)
_NAMES = ("node", "t", "id", "for", "fo", "sig")
_LOOKASIDE_NAMES = ("node", "t", "id", "for", "fo", "la", "sig")


@dataclass(frozen=True, slots=True)
class Hop:
    node: str  # the node that forwarded the request
    time: int  # when, in seconds since the epoch
    request_id: str  # the forwarding node's id of the request (its access log's "id")
    viewer: str  # the address the viewer connected from, as the forwarding node judged it
    failover: bool  # forwarded to a later owner because the first one is down
    lookaside: bool = False  # the owner asks what this node holds: answer from the cache only, never fill


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


def sign(key: bytes, hop: Hop, method: str, primary: str) -> str:
    """The field's value for `hop` on a `method` request for the object keyed `primary`.

    The node's own id and request id always fit the field (config and observe make them); a viewer address that
    would not (no PROXY or socket address is like that) is written as "-" rather than refused.
    """
    if len(key) < MIN_KEY:
        raise ValueError("a hop is signed with a cluster key of at least 32 characters")
    if not (_TOKEN.fullmatch(hop.node) and _TOKEN.fullmatch(hop.request_id)):
        raise ValueError(f"node id {hop.node!r} or request id {hop.request_id!r} cannot be written in a hop field")
    viewer = hop.viewer if _TOKEN.fullmatch(hop.viewer) else "-"
    values: tuple[str, ...] = (hop.node, str(hop.time), hop.request_id, viewer, "1" if hop.failover else "0")
    names: tuple[str, ...] = _NAMES
    if hop.lookaside:
        values, names = (*values, "1"), _LOOKASIDE_NAMES
    mac = _mac(key, method, primary, values)
    return ";".join(f"{n}={v}" for n, v in zip(names, (*values, mac), strict=True))


def verify(key: bytes, values: Sequence[str], method: str, primary: str, now: float) -> Hop | Refused:
    """The hop that the field values (every one the request carries) prove, or why they prove none."""
    if len(values) != 1:
        return Refused("more than one hop field")
    value = values[0]
    if len(key) < MIN_KEY:
        return Refused("this node has no cluster key")
    if len(value) > MAX_LENGTH or not value.isascii():
        return Refused("malformed")
    fields = [part.strip().partition("=") for part in value.split(";")]
    names = _LOOKASIDE_NAMES if len(fields) == len(_LOOKASIDE_NAMES) else _NAMES
    if len(fields) != len(names):
        return Refused("malformed")
    if any(name != want or sep != "=" for (name, sep, _), want in zip(fields, names, strict=True)):
        return Refused("malformed")
    parts = [v for _, _, v in fields]
    mac = parts.pop()
    lookaside = names is _LOOKASIDE_NAMES
    if lookaside and parts.pop() != "1":
        return Refused("malformed")
    node, stamp, request_id, viewer, failover = parts
    if not (_TOKEN.fullmatch(node) and _TOKEN.fullmatch(request_id) and _TOKEN.fullmatch(viewer)):
        return Refused("malformed")
    if not (stamp.isdigit() and len(stamp) <= 12 and failover in ("0", "1")):
        return Refused("malformed")
    signed = (node, stamp, request_id, viewer, failover, *(("1",) if lookaside else ()))
    expected = _mac(key, method, primary, signed)
    if not hmac.compare_digest(mac.encode("ascii"), expected.encode("ascii")):
        return Refused("bad signature")  # another key, another request, or altered
    if abs(now - int(stamp)) > MAX_SKEW:
        return Refused("outside the time window")  # a replay, or a node whose clock is wrong
    return Hop(node, int(stamp), request_id, viewer, failover == "1", lookaside)


def _mac(key: bytes, method: str, primary: str, values: tuple[str, ...]) -> str:
    # Each part length-prefixed: no choice of parts can give another choice's bytes.
    parts = (b"edgecache-hop-1", method.encode("ascii", "replace"), primary.encode("utf-8", "surrogatepass"))
    message = b"".join(b"%d:%s" % (len(p), p) for p in (*parts, *(v.encode("ascii") for v in values)))
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
