"""Who answers a request, before anything is looked up: the host and target it names (addressed, both paths' rule),
the site and key they name, a peer's
signed hop, the site's ACL, the key's owner (this node, standing in for an owner that is down, or a peer to
forward to) and the signed URL; or its refusal (core.admit), as the full handler would refuse it. The first step
of lookup.find_hit() and lookup.find_cold(); forward_verdict() is also the forward memo's (forwardmemo).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp.http_parser import RawRequestMessage
from yarl import URL

from edgecache.cluster.view import ClusterView
from edgecache.config import Site
from edgecache.core import admit
from edgecache.core.admit import Reply
from edgecache.core.headers import Headers, get_all
from edgecache.core.hop import FIELD as HOP
from edgecache.core.keepalive import KeepAlive
from edgecache.core.keys import BadTarget, CacheKey, make_key
from edgecache.core.popularity import spreadable
from edgecache.core.ring import Member
from edgecache.core.route import normalise_host
from edgecache.proxy import headparse
from edgecache.proxy.headparse import Parser
from edgecache.proxy.shared import Shared


@dataclass(frozen=True, slots=True)
class Refused:
    """A request refused before any lookup (core.admit), which the fast path answers as the full handler answers
    it (proxy.refuse): the reply, and what its log line and counters name."""

    reply: Reply
    method: str
    target: str  # the key's full target (never a signed URL's token), or as sent before there is a key
    headers: Headers
    site: str = "-"  # once the Host named one
    keep_alive: KeepAlive = KeepAlive.OPEN
    counted: bool = True  # False: an owner's look-aside, no viewer's request (observe.finish counts none)
    viewer: str | None = None  # a hop's viewer: logged as the client; its node counts the bytes it serves
    host: str | None = None  # the key's host, logged once there is a key (None: the Host field as sent)
    protocol: str | None = None  # the request's version, logged, where keep_alive's is not it (unversioned)

    @classmethod
    def keyed(
        cls,
        reply: Reply,
        method: str,
        key: CacheKey,
        headers: Headers,
        site: str,
        keep_alive: KeepAlive = KeepAlive.OPEN,
        counted: bool = True,
        viewer: str | None = None,
    ) -> Refused:
        """A refusal once the request has a key: logged with the key's target and host, as the full handler logs
        every request it refuses after its key is made (EdgeHandler._route)."""
        return cls(reply, method, key.full_target, headers, site, keep_alive, counted, viewer, key.host)


@dataclass(frozen=True, slots=True)
class Routed:
    """routed(): a request this node may answer, and whom it answers for."""

    host: str
    site: Site
    key: CacheKey
    client: str  # the hop's viewer, or the client as asked
    viewer: str | None  # a valid hop's viewer (Hit.viewer)
    fills: bool  # not a look-aside (Hit.fills)
    failover: bool = False  # a hop from a node that stands in for this one's next owner, which is down
    spread_from: Member | None = None  # a hot object's owner, which this node's copy is filled from (FillRequest)

    def refused(self, reply: Reply, method: str, headers: Headers) -> Refused:
        return Refused.keyed(reply, method, self.key, headers, self.site.name, viewer=self.viewer)


def unversioned(msg: RawRequestMessage | None) -> Refused | None:
    """The refusal of a GET or HEAD of a version llhttp takes and HTTP/1.x does not frame (HTTP/0.9, HTTP/2.0), as
    the full handler refuses it before anything else (core.admit.version): in HTTP/1.1, the highest version the node
    speaks (RFC 9110 6.2, RFC 9112 2.3: never one it does not), then the close (errorpage.in_http11's). Its log line
    names the request's version. None for any other head."""
    if msg is None or msg.method not in ("GET", "HEAD") or (reply := admit.version(*msg.version)) is None:
        return None
    fields, protocol = headparse.fields(msg) or (), f"HTTP/{msg.version.major}.{msg.version.minor}"
    return Refused(reply, msg.method, msg.path, fields, keep_alive=KeepAlive.CLOSE, protocol=protocol)


def addressed(url: URL, target: str, host_field: str | None) -> tuple[str, str] | Reply:
    """The host (normalised) and the origin-form target a request names, as its parser read them (`url`, and
    `target` as sent), or its refusal. An absolute-form target's authority wins over Host (RFC 9112 3.2.2), and it
    must be http or https: a client configured to use the edge as its proxy sends that form. The full handler's
    rule and the fast path's."""
    if url.is_absolute():
        if url.scheme not in ("http", "https"):
            return admit.NOT_HTTP
        host, target = normalise_host(url.raw_authority), url.raw_path_qs
    else:
        host = normalise_host(host_field)
    return admit.NO_HOST if host is None else (host, target)


def misdirected(shared: Shared, transport: asyncio.BaseTransport | None, host: str) -> bool:
    """A request on an HTTPS connection whose SNI name chose another certificate than `host`'s (domain fronting),
    answered admit.MISDIRECTED; never one on a plain connection, nor one whose client sent no name."""
    covers = shared.sni_misdirected
    conn = transport.get_extra_info("ssl_object") if transport is not None and covers is not None else None
    return conn is not None and covers is not None and covers(conn, host)


def fronted(shared: Shared, transport: asyncio.BaseTransport | None, head: bytes, parser: Parser) -> Refused | None:
    """misdirected() for a plain GET or HEAD on an HTTPS connection, before the fast path looks it up (or remembers
    it): its refusal (admit.MISDIRECTED, the connection closed after it, as the full handler's ClientError closes
    it). None for any other head: the fast path decides it, and what it leaves to the full handler is judged there
    (EdgeHandler._route asks misdirected() itself)."""
    msg = parser.message(head)
    if msg is None or not headparse.plain(msg):
        return None
    fields = headparse.fields(msg)
    found = addressed(msg.url, msg.path, msg.headers.get("Host"))
    if fields is None or isinstance(found, Reply) or not misdirected(shared, transport, found[0]):
        return None
    closed = KeepAlive.of(msg.version.minor, False)
    return Refused(admit.MISDIRECTED, msg.method, msg.path, fields, keep_alive=closed)


def routed(
    shared: Shared,
    method: str,
    host: str,
    target: str,
    headers: Headers,
    client: str,
    basis: bool,
    hop_field: str | None,
    admitted: bool = False,
    copy: bool = False,
    placed: Here | None = None,
) -> Routed | Forward | Elsewhere | Refused | None:
    """find_hit()'s first step once addressed() has named the host and target: the site and key, then the hop, the
    ACL, the owner (_where) and the signed URL. A request refused on the way gets the Reply the full handler would
    give it (core.admit). `copy`: the request may be answered from a copy of a hot object another node owns: a
    `basis` request (find_cold's) if the object is hot now, any other because it was found hot. `placed`: where
    the request's fill put it when it started (coldmiss.Started.placed), which stands."""
    if method not in ("GET", "HEAD") or not target.startswith("/"):
        return None  # an asterisk or authority form, and everything but GET/HEAD: the full handler's checks
    site = shared.router.match(host)
    if site is None:
        return Refused(admit.no_site(host), method, target, headers)
    try:
        key = make_key(site.name, host, target, site.key_query)
    except BadTarget as exc:
        return Refused(admit.bad_target(str(exc)), method, target, headers, site.name)
    cluster = shared.cluster
    hop_fields = [hop_field] if hop_field is not None else get_all(headers, HOP)  # cut from the head (decide.py)
    hop = cluster.honoured(hop_fields, method, key.primary) if cluster is not None else None
    if hop is not None:  # its viewer was judged (ACL, signed URL, rate limit) by the node that forwarded it
        return Routed(host, site, key, hop.viewer, hop.viewer, not hop.lookaside, hop.failover)
    looped = admit.looped(get_all(headers, "via"), shared.engine.origin.loop_token)
    refused, where = looped or admit.acl(site, client), HERE
    if refused is None and cluster is not None:
        found = placed or _where(shared, cluster, site, key, method, headers, client, basis, admitted, copy)
        if isinstance(found, Forward) and found.member is not None:
            found = admit.sent_back(hop_fields, found.member.id) or found
        if not isinstance(found, Here | Reply):
            return found
        refused, where = (found, where) if isinstance(found, Reply) else (None, found)
    if not admitted:  # let in already: its signed URL was good then, as the full handler judges it once
        refused = refused or admit.signed(site, key.path, key.unkeyed, client, time.time())
    if refused is not None:
        return Refused.keyed(refused, method, key, headers, site.name)
    return Routed(host, site, key, client, None, True, where.standing_in, where.spread_from)


class Here:
    """_where(): this node answers the request itself (it owns the key, or holds a copy of a hot one, filled from
    `spread_from`; or it stands in for the key's owner, which is down: a miss's cause is peer-down then)."""

    def __init__(self, standing_in: bool = False, spread_from: Member | None = None) -> None:
        self.standing_in = standing_in
        self.spread_from = spread_from


HERE, STANDING_IN = Here(), Here(standing_in=True)


@dataclass(frozen=True, slots=True)
class Elsewhere:
    """The key of a whole-object basis (decide.Decider._ranged) is another node's: decide the request itself."""


ELSEWHERE = Elsewhere()


@dataclass(frozen=True, slots=True)
class Forward:
    """A request the object's owner answers: the fast path relays it there over a signed hop (proxy.relay)."""

    method: str
    headers: Headers
    client: str  # the viewer, judged here (ACL, signed URL, rate limit): the owner takes the hop's word for it
    site: Site
    key: CacheKey
    member: Member | None = None  # the first owner that is up
    failover: bool = False  # that is not the first owner, which is down
    keep_alive: KeepAlive = KeepAlive.OPEN  # the viewer's version, and whether its connection stays open after


def _where(
    shared: Shared,
    cluster: ClusterView,
    site: Site,
    key: CacheKey,
    method: str,
    headers: Headers,
    client: str,
    basis: bool,
    admitted: bool,
    copy: bool = False,
) -> Here | Forward | Elsewhere | Reply:
    """Who answers a request no hop vouches for: this node (HERE, or STANDING_IN for an owner that is down, or a
    copy of a hot object filled from its owner), its owner (a Forward), or the whole-object basis's caller
    (ELSEWHERE); or the refusal of a forward (forward_verdict). A `basis` request is not asked of the popularity
    gate (it was, for the request it is part of): with `copy`, the gate says whether the object is hot now. Any
    other request with `copy` was found hot already (forwardmemo's HOT): it is answered from this node's copy."""
    up = cluster.route(key.primary)
    first = cluster.ring.owner(key.primary)
    if up[0].id == cluster.self_id:
        return HERE if first is None or first.id == cluster.self_id else STANDING_IN
    if basis:  # the request itself was answered here when the owner lacks a purge (BEHIND): its fill is too
        hot = copy and spreadable(headers) and shared.popular.hot(key.primary, time.monotonic())
        return Here(spread_from=up[0]) if hot else HERE if _behind(cluster, site, key, up[0]) else ELSEWHERE
    if copy:
        return Here(spread_from=up[0])
    verdict = forward_verdict(shared, site, key, client, spreadable(headers), up[0], admitted)
    if isinstance(verdict, Reply):
        return verdict
    if verdict == HOT:
        return Here(spread_from=up[0])
    if verdict == BEHIND:
        return HERE
    failover = first is not None and up[0].id != first.id
    return Forward(method, headers, client, site, key, up[0], failover)


GO, HOT, BEHIND = "go", "hot", "behind"


def _behind(cluster: ClusterView, site: Site, key: CacheKey, owner: Member) -> bool:
    """May the `owner` still hold what a purge applied here removed (cluster.behind)? Then this node answers."""
    return cluster.lacks_purge(owner.id, site.name, key)


def forward_verdict(
    shared: Shared, site: Site, key: CacheKey, client: str, heat: bool, owner: Member | None, admitted: bool = False
) -> str | Reply:
    """Whether a request another node owns, from a viewer its site's ACL allows, is relayed to that `owner` (GO),
    answered from this node's copy of a hot object (HOT: `heat` says the request counts towards it), answered by
    this node itself because the owner may still hold what a purge applied here removed (BEHIND: cluster.behind),
    or refused (its signed URL, then the rate limit: core.admit). The one rule for a forward decided in full
    (_where) and for a remembered one (forwardmemo): the viewer, the moment and the owner's purges are asked
    again on every request. `admitted`: the request was let in already (a forward decided again for the next
    owner when its owner could not be reached): it goes on, judged and counted once, as the full handler's
    to_owner sends it to the next owner."""
    if owner is not None and shared.cluster is not None and _behind(shared.cluster, site, key, owner):
        return BEHIND
    if admitted:
        return GO
    if heat and shared.popular.asked(key.primary, time.monotonic()):
        return HOT
    refused = admit.signed(site, key.path, key.unkeyed, client, time.time())
    if refused is not None:
        return refused
    limiter = shared.limiter
    too_many = limiter.refusal(client, time.monotonic()) if limiter is not None else None
    return GO if too_many is None else too_many
