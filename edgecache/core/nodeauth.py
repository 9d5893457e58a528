"""How a node proves itself on a peer's admin API (a purge passed on, a purge log read): each request signed.

A bearer token would be sent in the clear with every request, every `cluster.interval`, to every peer: whoever
could read the nodes' traffic once could purge every site of every node, for as long as the key lasts. So the
token derived from the cluster key (core.purge.peer_token) never leaves a node: it is the HMAC-SHA256 key of a
signature over the request's method, its path, the time and its body's digest, worthless for another body or
after hop.MAX_SKEW seconds. What an exact copy can do within that time was done already: a purge is applied once
whatever copy brings it (its id, storage.purging.claim), and a purge log read changes nothing.

Pure: `now` is a parameter; nothing here raises on what a client sends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from edgecache.core.hop import MAX_SKEW

SCHEME = "Edgecache-Node"  # the Authorization scheme: `Edgecache-Node t=<seconds>,sig=<base64url>`
_CREDENTIALS = re.compile(r"t=([0-9]{1,12}),sig=([A-Za-z0-9_-]{43})", re.ASCII)
_DOMAIN = b"edgecache-admin-node-1"


def authorization(token: str, method: str, path: str, body: bytes, now: float) -> str:
    """The Authorization value of a node's request to a peer's admin API, signed with the nodes' `token`."""
    stamp = str(int(now))
    return f"{SCHEME} t={stamp},sig={_mac(token, method, path, stamp, body)}"


def verified(token: str, credentials: str, method: str, path: str, body: bytes, now: float) -> bool:
    """Do the `credentials` (what follows the scheme) sign this request with `token`, within the time window?"""
    found = _current(credentials, now)
    if found is None:
        return False
    stamp, mac = found
    expected = _mac(token, method, path, stamp, body)
    return hmac.compare_digest(mac.encode("ascii"), expected.encode("ascii"))


def may_be_signed(credentials: str, now: float) -> bool:
    """Could `credentials` sign a request at all: a node's form, a time within the window? Asked before the body is
    read (admin.auth): anyone can write the scheme's name, and nothing else about them is worth a body's read."""
    return _current(credentials, now) is not None


def _current(credentials: str, now: float) -> tuple[str, str] | None:
    """The time and signature of `credentials` of a node's form, signed within the window (the time is public:
    checked before the signature, it tells nothing of the token)."""
    found = _CREDENTIALS.fullmatch(credentials.strip())
    if found is None:
        return None
    stamp, mac = found.groups()
    return (stamp, mac) if abs(now - int(stamp)) <= MAX_SKEW else None


def _mac(token: str, method: str, path: str, stamp: str, body: bytes) -> str:
    # Each part length-prefixed, so no two choices of parts give the same bytes; the body by its digest.
    parts = [method.encode("ascii", "replace"), path.encode("utf-8", "surrogateescape"), stamp.encode("ascii")]
    parts.append(hashlib.sha256(body).digest())
    message = _DOMAIN + b"".join(b"%d:%s" % (len(p), p) for p in parts)
    digest = hmac.new(token.encode("utf-8", "surrogateescape"), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
