"""Who may have what: the refusals a request meets once its site and key are known, before any lookup; and what
a request the stored entry did not answer gets instead of a fill (unfilled).

One rule for both request paths. The full handler (proxy.handler) raises each as a ClientError; the fast path
(proxy.hit, proxy.forwardmemo) answers it itself (proxy.refuse), with the same status, reason and bytes. The order
is the same on both: the site's ACL, then its signed URLs, then the rate limit, so a token of the client's rate is
spent only on a request that is otherwise let in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edgecache.core.hop import sender
from edgecache.core.lookaside import NOT_HELD as _NOT_HELD
from edgecache.core.signing import Signing, verify


class SiteRules(Protocol):
    """What admission reads of a site (config.Site)."""

    @property
    def name(self) -> str: ...

    @property
    def signing(self) -> Signing | None: ...

    def allows(self, client: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer edgecache writes itself instead of serving the request: a status and one short reason."""

    status: int
    reason: str
    retry_after: int = 0  # seconds, of a 429: when the client may ask again (error_page says 1 when not set)


NO_HOST = Reply(400, "missing or invalid Host")
NOT_HTTP = Reply(400, "absolute-form target must be http or https")
# An HTTPS request for a host another certificate than its SNI name's covers (tls.Certificates.misdirected).
MISDIRECTED = Reply(421, "misdirected request: the TLS server name (SNI) names another certificate than this host's")
# A request line naming a version llhttp takes but HTTP/1.x framing does not (HTTP/0.9, HTTP/2.0): RFC 9110 15.6.6.
NO_VERSION = Reply(505, "HTTP version not supported: only HTTP/1.0 and HTTP/1.1")
_FRAMED = frozenset({(1, 0), (1, 1)})  # what core.keepalive frames
TOO_MANY = Reply(429, "too many requests from this address")
# Load shed before any work (Shared.overloaded): a quick, honest answer instead of a slow collapse.
OVERLOADED = Reply(503, "overloaded: try again shortly")


def internal(kind: str) -> Reply:
    """The answer to a request whose handling raised an exception nobody expected (a bug; `kind`: its class name),
    when no byte of its answer went out: both paths' (proxy.internal, EdgeHandler._answer)."""
    return Reply(500, f"internal error ({kind})")


# A miss that may not be filled: the client asked for a stored answer only (RFC 9111 5.2.1.7), and none is stored.
NOT_CACHED = Reply(504, "only-if-cached and not in cache")
# The same for an owner's look-aside (core.lookaside), which is never filled: nothing is held here.
NOT_HELD = Reply(504, _NOT_HELD)


# A request that came from this edge itself: its fills and passes name the node in Via (core.forward.via_sent).
LOOPED = Reply(
    508, "loop: this request came from this edge; a site's origin leads back to it (its address, or its name in DNS)"
)


def looped(via: list[str], token: str) -> Reply | None:
    """LOOPED for a request whose Via names this node (`token`, core.forward.via_sent); None for any other."""
    return LOOPED if token and any(token in value for value in via) else None


# A request another node forwarded without proving it (core.hop), which this node would forward back to that node:
# the two disagree on the owner (another node list or weights) and cannot prove their hops to each other (another
# cluster key, clocks apart), so it would go back and forth until a timeout.
SENT_BACK = Reply(508, "loop: the cluster's nodes disagree on this object's owner and do not honour each other's hops")


def sent_back(hop_fields: Sequence[str], to: str) -> Reply | None:
    """SENT_BACK for a request whose hop field, proven or not, names `to`, the node it would be forwarded to."""
    return SENT_BACK if hop_fields and sender(hop_fields) == to else None


def version(major: int, minor: int) -> Reply | None:
    """NO_VERSION for a request of any version but HTTP/1.0 and HTTP/1.1, refused before anything else is looked at
    (by either request path); None for those two."""
    return None if (major, minor) in _FRAMED else NO_VERSION


def no_site(host: str) -> Reply:
    return Reply(421, f"no site is configured for host {host!r}")


def bad_target(reason: str) -> Reply:
    return Reply(400, reason)


def acl(site: SiteRules, client: str) -> Reply | None:
    """The site's client ACL (server.allow by subnet): None when the client may use the site."""
    return None if site.allows(client) else Reply(403, f"this address may not use site {site.name!r}")


def signed(site: SiteRules, path: str, unkeyed: str, client: str, now: float) -> Reply | None:
    """The site's signed URLs: None when it wants none, or the query carries a valid token at `now`."""
    if site.signing is None:
        return None
    refusal = verify(site.signing, path, unkeyed, client, now)
    return None if refusal is None else Reply(403, refusal.value)


def viewer(site: SiteRules, path: str, unkeyed: str, client: str, now: float) -> Reply | None:
    """The ACL, then the signed URL: what a viewer's request must pass before the rate limit is asked."""
    return acl(site, client) or signed(site, path, unkeyed, client, now)


class Pass:
    """unfilled(): the origin answers the request as the client sent it; nothing is stored."""


PASS = Pass()


def unfilled(look_aside: bool, stored: bool, only_if_cached: bool, conditional: bool) -> Reply | Pass | None:
    """What a request the stored entry (if `stored`) did not answer gets when no fill may be started for it; None:
    the fill. A look-aside (core.lookaside) never fills: what is held fresh was answered already. only-if-cached
    is refused (RFC 9111 5.2.1.7: a stored response the request's constraints allow, else 504), whether nothing is
    stored or what is stored must be revalidated first. The client's own validators go to the origin, which alone
    can answer them (they are not the key's: the answer is not stored)."""
    if look_aside:
        return NOT_HELD
    if only_if_cached:
        return NOT_CACHED
    if stored:
        return None
    return PASS if conditional else None
