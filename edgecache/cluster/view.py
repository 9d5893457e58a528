"""This node's view of the cluster: who the members are, who is up, and the ring built from them.

All changes go through this class and replace the ring whole; readers take `self.ring` once per request.
Membership comes from the config, or from DNS records that list the nodes (a Kubernetes headless service).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Protocol

import aiohttp

from edgecache import metrics
from edgecache.config import ClusterSettings
from edgecache.core import hop, lookaside, nodeid
from edgecache.core.health import Health
from edgecache.core.keys import CacheKey
from edgecache.core.ring import Member, Ring

log = logging.getLogger(__name__)

_REFUSAL_LOG_EVERY = 60.0  # seconds between two log lines about hop fields this worker did not honour
DNS_NAME_TIMEOUT = 2.0  # seconds one member's PTR lookup may take before it keeps the name it had
# A node that is no member here but asks this node's purge log (one added whose peers' files do not name it yet, or
# one retired that DNS still sends viewers to) is told of purges while it asks, every cluster.interval: forgotten
# this many seconds (or three intervals, if longer: it asks once an interval) after its last ask, or at once when a
# purge passed on to it fails. At most MAX_ASKERS of them.
ASKED_WITHIN = 60.0
MAX_ASKERS = 64


class ClusterView:
    def __init__(self, settings: ClusterSettings, self_member: Member | None = None) -> None:
        self.settings = settings
        self.self_id = settings.self_id
        self.health: dict[str, Health] = {}
        self.changes = 0  # counts peers going up or down: a route decided before is stale once it moves
        self.rounds = 0  # rounds of health checks recorded: a wait may need results of probes sent after an event
        self.failing: dict[str, int] = {}  # a peer whose last probe or forward failed: the round it failed in
        self._askers: dict[str, tuple[str, float]] = {}  # a non-member that asks: its admin address, when it last did
        self.ring = Ring.of(())
        self._changed = asyncio.Event()
        self._refusals_logged = -_REFUSAL_LOG_EVERY
        # Told of each peer that joins or comes up (True), and leaves or goes down (False): cluster.purgesync.
        self.listeners: list[Callable[[str, bool], None]] = []
        # DNS names no admin listener: a member DNS lists has its admin API at this port of its address (every node
        # of a DNS cluster runs one config), where health checks and purges reach it.
        self.dns_admin_port: int | None = None
        # (peer, site, host, path, primary, counted) -> the kind of a purge applied here that covers the object and
        # that the peer has not applied, or None (cluster.behind sets it): the peer's cached bytes of it are never
        # relayed nor stored here (lacks_purge), or that purge would be undone. Without purge sync (a node alone)
        # nothing is purged behind a peer's back.
        self.peer_lacks: Callable[[str, str, str, str, str, bool], str | None] = lambda *_: None
        # (peer, origin, number): the peer has applied that purge (it confirmed it, or passed it on: admin.purge).
        self.peer_applied: Callable[[str, str, int], None] = lambda *_: None
        members = list(settings.nodes)
        if self_member is not None and self_member.id not in {m.id for m in members}:
            members.append(self_member)
        self.set_members(members)
        self.members_known = settings.dns is None  # with DNS: once it has answered (set_members)

    def set_members(self, members: Iterable[Member]) -> None:
        self.members_known = True
        if self.dns_admin_port is not None:
            at = self.dns_admin_port
            members = [m if m.admin else replace(m, admin=f"{m.address.rpartition(':')[0]}:{at}") for m in members]
        ring = Ring.of(members)
        if ring == self.ring:
            return
        before = {m.id for m in self.ring.members}
        # A member that joins a view that has peers (a reload, a DNS change) is used once `rise` checks say it is up:
        # it may not serve yet, and a forward to it waited for it and was answered 504. A node starting takes the
        # peers it begins with as up, as before.
        joined = Health(up=False) if before - {self.self_id} else Health()
        self.health = {m.id: self.health.get(m.id, joined) for m in ring.members}
        self.failing = {i: r for i, r in self.failing.items() if i in self.health}  # bounded as the ring is
        self.ring = ring
        for m in ring.members:
            metrics.PEER_UP.labels(m.id).set(1 if self.health[m.id].up else 0)
        log.info("cluster members: %s", ", ".join(f"{m.id}@{m.address}" for m in ring.members))
        after = {m.id for m in ring.members}
        for member_id in sorted((after - before) | (before - after)):
            if member_id != self.self_id:
                for tell in self.listeners:
                    tell(member_id, member_id in after)

    def is_up(self, member_id: str) -> bool:
        return member_id == self.self_id or self.health.get(member_id, Health()).up

    def route(self, key: str) -> list[Member]:
        """Owners of `key` that are up, best first; this node is always among them."""
        return [m for m in self.ring.owners(key) if self.is_up(m.id)]

    def record(self, member_id: str, ok: bool) -> None:
        before = self.health.get(member_id)
        if before is None:
            return
        after = before.record(ok, self.settings.rise, self.settings.fall)
        self._note(member_id, ok)
        self._set(member_id, before, after, "health checks")

    def failed(self, member_id: str, why: str) -> None:
        """A forward to it could not connect: down now, without waiting for the health checks."""
        before = self.health.get(member_id)
        if before is not None:
            self._note(member_id, False)
            self._set(member_id, before, before.failed_hard(), why)

    def _note(self, member_id: str, ok: bool) -> None:
        if ok:
            self.failing.pop(member_id, None)
        else:
            self.failing[member_id] = self.rounds

    def answers(self, member_id: str) -> bool:
        """Did its last health check (or forward) succeed, or has it asked this node's purge log since (heard_from)?
        So does one seen down that is on its way back up: a node that restarted listens, and takes purges, before
        `rise` checks in a row bring it up here."""
        return member_id in self.health and member_id not in self.failing

    def heard_from(self, member_id: str) -> None:
        """The peer asked this node's purge log (signed with the cluster's key): it runs, and its admin listener takes
        purges, until a check of it fails again. Not up: that is the health checks' to say."""
        if member_id in self.health:
            self.failing.pop(member_id, None)

    def asked(self, node_id: str, admin: str | None) -> None:
        """A node asked this node's purge log, signed with the cluster's key, saying where its admin listener is: a
        member is heard from; one that is no member here is told of the purges this node takes (outsiders), or it
        served what they removed until its own next round."""
        self.heard_from(node_id)
        if admin is None or node_id == self.self_id or node_id in self.health:
            return
        self._askers.pop(node_id, None)
        self._askers[node_id] = (admin, time.monotonic())
        while len(self._askers) > MAX_ASKERS:
            del self._askers[next(iter(self._askers))]

    def outsiders(self) -> list[Member]:
        """The nodes that are no members here and asked this node's purge log lately (ASKED_WITHIN)."""
        now = time.monotonic()
        within = max(ASKED_WITHIN, 3 * self.settings.interval)
        self._askers = {i: (a, t) for i, (a, t) in self._askers.items() if now - t <= within and i not in self.health}
        return [Member(i, "", admin=a) for i, (a, _) in self._askers.items()]

    def forget(self, node_id: str) -> None:
        """A purge passed on to the outsider failed: it is told no more until it asks again."""
        self._askers.pop(node_id, None)

    def failed_since(self, member_id: str, round_: int) -> bool:
        """Did the last probe of (or forward to) the peer fail, in round `round_` of health checks or later? Its
        being down is then news from after that round began, not a verdict from before it."""
        return self.failing.get(member_id, -1) >= round_

    def _set(self, member_id: str, before: Health, after: Health, why: str) -> None:
        self.health[member_id] = after
        if before.up != after.up:
            self.changes += 1
            log.warning("peer %s is %s (%s)", member_id, "up" if after.up else "down", why)
            metrics.PEER_UP.labels(member_id).set(1 if after.up else 0)
            for tell in self.listeners:
                tell(member_id, after.up)
            self._wake()

    def checked(self) -> None:
        """A round of health checks is recorded."""
        self.rounds += 1
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Until `predicate` holds, woken by each change of a peer's health and each round of health checks (bound
        it with a timeout)."""
        while not predicate():
            await self._changed.wait()

    def lacks_purge(self, member_id: str, site: str, key: CacheKey, counted: bool = True) -> bool:
        """May `member` still hold the object of `key` as it was before a purge applied here (it has not applied a
        purge that covers it, core.purgegap)? Then a request for it is never relayed to that member: this node
        answers it itself, from its own cache or the origin, until the member's purge log shows the purge; nor
        are its bytes stored here (a look-aside, a hot copy's fill). `counted`: a viewer's request answered here
        instead (edgecache_peer_purge_behind_total); a fill's is counted as the fill's (peer_lookaside)."""
        return self.peer_lacks(member_id, site, key.host, key.path, key.primary, counted) is not None

    def previous_owner(self, key: str) -> Member | None:
        """Whom this node asks for `key` before the origin, when it owns it (core.lookaside)."""
        return lookaside.previous_owner(self.route(key), self.self_id)

    def hop_field(
        self, method: str, primary: str, request_id: str, viewer: str, failover: bool, look_aside: bool = False
    ) -> str:
        """The signed hop field of a request this node forwards to the owner of `primary` (or, look_aside, asks of
        the previous owner's cache)."""
        stamp = hop.Hop(self.self_id, int(time.time()), request_id, viewer, failover, look_aside)
        return hop.sign(self.settings.key, stamp, method, primary)

    def honoured(self, values: Sequence[str], method: str, primary: str) -> hop.Hop | None:
        """The hop a request's hop fields prove (then it is served here, for the viewer named), or None: an
        ordinary client request, whatever it carries (its hop fields are never sent on: core.forward)."""
        if not values:
            return None
        now = time.time()
        verdict = hop.verify(self.settings.key, values, method, primary, now)
        if isinstance(verdict, hop.Hop):
            return verdict
        for key in self.settings.accepted:  # a peer that signs with the key being changed to, or from
            other = hop.verify(key, values, method, primary, now)
            if isinstance(other, hop.Hop):
                return other
        # A client's forgery, or nodes whose keys or clocks differ: said now and then, not once per request.
        now = time.monotonic()
        if now - self._refusals_logged >= _REFUSAL_LOG_EVERY:
            self._refusals_logged = now
            log.warning("a request's %s field was not honoured (%s): taken as a client's", hop.FIELD, verdict.reason)
        return None

    def describe(self, key: str) -> list[dict[str, object]]:
        return [
            {"id": m.id, "address": m.address, "weight": m.weight, "up": self.is_up(m.id), "self": m.id == self.self_id}
            for m in self.ring.owners(key)
        ]


async def check_health(view: ClusterView, session: aiohttp.ClientSession) -> None:
    """Active checks, forever: GET /healthz on each peer's admin listener (or connect to its client port)."""
    timeout = aiohttp.ClientTimeout(total=view.settings.timeout)
    while True:
        peers = [m for m in view.ring.members if m.id != view.self_id]
        results = await asyncio.gather(*(_probe(m, session, timeout) for m in peers))
        for m, ok in zip(peers, results, strict=True):
            if not ok:
                metrics.PEER_ERRORS.labels(m.id, "health").inc()
            view.record(m.id, ok)
        view.checked()
        await asyncio.sleep(view.settings.interval)


async def _probe(m: Member, session: aiohttp.ClientSession, limits: aiohttp.ClientTimeout) -> bool:
    try:
        if m.admin:
            async with session.get(f"http://{m.admin}/healthz", timeout=limits) as r:
                return r.status == 200
        return await _connects(m.address, limits.total or 1.0)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return False


async def _connects(address: str, seconds: float) -> bool:
    """A TCP connect to the peer's client port, on a socket closed whatever happens (even a cancellation)."""
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(seconds):
            await loop.sock_connect(sock, sockaddr)
        return True
    except TimeoutError:
        # The deadline may have passed while this node's own loop was busy, after the kernel had connected: the
        # peer answered, and only the prober was late. A peer that truly did not answer has no peer name here.
        return _connected(sock)
    finally:
        sock.close()


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


class Resolver(Protocol):
    """The DNS lookups of follow_dns: the system's (SystemResolver), or a test's own."""

    async def addresses(self, host: str, port: int) -> list[tuple[str, int]]:
        """(IP, port) of every address `host` resolves to. Raises OSError when it does not resolve."""
        ...

    async def name(self, ip: str) -> str | None:
        """The PTR name of `ip`; None if it has none. Raises OSError when DNS does not answer."""
        ...


class SystemResolver:
    def __init__(self) -> None:
        # One PTR lookup per address at a time. The system's lookups run in threads that a timeout cannot stop:
        # one that outlasts its round (a DNS server that does not answer) goes on, and the next rounds wait for
        # it rather than queue more behind it, so a hung server costs one thread per member, not one per round.
        self._lookups: dict[str, asyncio.Future[tuple[str, str]]] = {}

    async def addresses(self, host: str, port: int) -> list[tuple[str, int]]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(str(info[4][0]), port) for info in infos]

    async def name(self, ip: str) -> str | None:
        lookup = self._lookups.get(ip)
        if lookup is None:
            lookup = asyncio.ensure_future(asyncio.get_running_loop().getnameinfo((ip, 0), socket.NI_NAMEREQD))
            self._lookups[ip] = lookup
            lookup.add_done_callback(lambda done: self._done(ip, done))
        try:
            name, _ = await asyncio.shield(lookup)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_NONAME:
                return None
            raise
        return name

    def _done(self, ip: str, lookup: asyncio.Future[tuple[str, str]]) -> None:
        del self._lookups[ip]
        if not lookup.cancelled():
            lookup.exception()  # read here, so that one no round waited for to its end is not reported unread


async def follow_dns(view: ClusterView, resolver: Resolver | None = None) -> None:
    """Membership from DNS, forever: every address the name resolves to is a node (dns_members)."""
    assert view.settings.dns is not None
    resolver = resolver or SystemResolver()
    while True:
        try:
            view.set_members(await dns_members(view, resolver))
        except OSError as exc:
            log.warning("cluster DNS %s did not resolve, keeping the last members: %s", view.settings.dns, exc)
        await asyncio.sleep(view.settings.dns_interval)


async def dns_members(view: ClusterView, resolver: Resolver) -> list[Member]:
    """The members DNS lists now. A node whose own id is an address names every member by its address; any
    other id is a name, and members are named by their PTR records (core.nodeid.member_name), so a pod keeps
    its id, its keys and its volume's cache when it comes back at another address. An address whose name
    lookup fails keeps the name it had; this node keeps its place while DNS leaves it out (it is not ready)."""
    assert view.settings.dns is not None
    host, _, port = view.settings.dns.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal is written in brackets (config.Listen)
    answers = await resolver.addresses(host, int(port))
    addresses = sorted({nodeid.canonical(f"[{ip}]:{at}") for ip, at in answers})
    if nodeid.is_address(view.self_id):
        by_id = {a: a for a in addresses}
    else:
        before = {m.address: m.id for m in view.ring.members}
        names = await asyncio.gather(*(_member_name(resolver, a, host, before.get(a)) for a in addresses))
        by_id = nodeid.named_members(zip(addresses, names, strict=True))
        if unnamed := [a for a, n in zip(addresses, names, strict=True) if n is None]:
            log.warning("cluster DNS %s: no name under %s for %s: left out", view.settings.dns, host, unnamed)
    members = [Member(id=i, address=a) for i, a in by_id.items()]
    if view.self_id not in by_id:
        members += [m for m in view.ring.members if m.id == view.self_id]
    return members


async def _member_name(resolver: Resolver, address: str, service: str, before: str | None) -> str | None:
    try:
        async with asyncio.timeout(DNS_NAME_TIMEOUT):
            ptr = await resolver.name(address.rpartition(":")[0].strip("[]"))
    except (OSError, TimeoutError):
        return before
    return nodeid.member_name(ptr, service) if ptr is not None else None
