"""Purges that are never missed: each node asks its peers for the purges it lacks, and doubts its cache until
it has them.

Every purge carries an identity (core.purge.Entry) and every node keeps the newest ones with its purge log. A
node that took a purge from an operator tells its peers at once (admin.purge); one that was down, cut off, or
slow to hear finds out here: every `cluster.interval` it sends each peer's admin API its vector (which purges it
has applied) and gets back the ones it lacks, at most core.purge.BATCH at a time, and applies them.

Until it has caught up it doubts its cache (Store.doubt): what it stored before the doubt began is revalidated
with the origin before it is served, so it keeps serving and never serves bytes a missed purge removed. It
doubts when it starts, when a peer comes back up or joins (that peer may have taken purges meanwhile), and when a
peer's vector shows purges it lacks; it is caught up when every peer that is up and keeps a purge log has
answered and it has applied everything that peer had. A peer that is down cannot be asked: it is waited for
when it comes back. A peer without an admin listener, or one that answers 404 (a version without purge logs),
has nothing to pass on and is not waited for.

A node too far behind (its peer no longer keeps the purges it lacks) resets: it purges every site hard, which
removes more than all it missed, and takes that peer's vector as its own.

With several worker processes every worker asks and doubts for itself; only worker 0 applies what it gets
(the purge log is written by one process); the others see it through the log (Store.catch_up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from edgecache import metrics
from edgecache.cluster.behind import Behind
from edgecache.cluster.view import ClusterView
from edgecache.config import Site
from edgecache.core import nodeauth, purgegap
from edgecache.core.purge import Answer, Entry, parse_tombstones, parse_vector, peer_token
from edgecache.core.purgeprune import Heard, prunable
from edgecache.core.ring import Member
from edgecache.storage.store import Store

log = logging.getLogger(__name__)

MAX_BATCHES = 16  # answers taken from one peer in one round; the rest comes in the next round
MAX_ANSWER = 4 * 2**20  # bytes of one answer read, at most: BATCH entries of 8 KiB URLs are about 1 MiB
AFTER_PATH = "/purges/after"
PURGE_PATH = "/purge"  # where an operator's purge is taken, and where a node passes it on (admin.purge)


async def apply_entry(
    store: Store, sites: tuple[Site, ...], entry: Entry, now: float, strict: bool = False, numbered: bool = True
) -> bool:
    """Apply `entry` here unless it was already; whether it was new. TableFull (only when `strict`, for a purge
    this node takes from an operator) before anything changes; a purge another node took is always applied.
    Not `numbered`: a node alone, with no peer to pass purges to, keeps no entries (only the table's marks)."""
    while numbered and not store.claim(entry):
        if not await store.taken(entry):  # applied before: nothing to do; else applied or retracted meanwhile
            return False
    logged = entry if numbered else None
    site = next((s for s in sites if s.name == entry.site), None)
    try:
        if site is None:  # a site this node does not serve holds nothing here: taken, so it is not asked for again
            if logged is not None:
                await store.note_purge(logged)
        elif isinstance(where := purgegap.reach(entry, site.key_query), str):  # a URL: its primary key
            await (store.soft_invalidate(where, now) if entry.soft else store.invalidate(where))
            if logged is not None:
                await store.note_purge(logged)
        elif entry.kind == "url":  # this node keys the site otherwise: the whole site, which covers the URL
            await store.purge_scope(where, False, now, logged, strict=False)
            return True
        else:
            await store.purge_scope(where, entry.soft, now, logged, strict)
    except BaseException:
        if logged is not None:
            store.retract(logged)
        raise
    metrics.PURGES.labels(entry.kind, "soft" if entry.soft else "hard").inc()
    return True


async def reset(store: Store, sites: tuple[Site, ...], answer: Answer, now: float) -> None:
    """Too far behind to be told what was missed: every site purged hard, then the answer's vector taken as
    applied, and its retired origins as retired here too."""
    log.warning("purge log: a peer no longer keeps purges this node lacks; purging every site to catch up")
    for site in sites:
        await store.purge_scope((site.name, "", ""), False, now, strict=False)
    await store.adopt(answer.vector, answer.retired)
    metrics.PURGE_CATCHUPS.labels("reset").inc()


def parse_answer(doc: Any) -> Answer | None:
    """A peer's answer to AFTER_PATH, or None when malformed (never raises)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        return None
    vector, retired = parse_vector(doc.get("vector")), parse_tombstones(doc.get("retired", {}))
    entries = [Entry.from_json(row) for row in doc["entries"]]
    me = doc.get("me")
    if vector is None or retired is None or any(e is None for e in entries) or not isinstance(me, str | None):
        return None
    found = tuple(e for e in entries if e is not None)
    return Answer(found, doc.get("more") is True, doc.get("gap") is True, vector, me, retired)


@dataclass(frozen=True, slots=True)
class NoLog:
    """A peer that keeps no purge log (no admin listener, or a 404): nothing to wait for."""


class PurgeSync:
    def __init__(
        self,
        view: ClusterView,
        store: Store,
        sites: Callable[[], tuple[Site, ...]],
        session: aiohttp.ClientSession,
        applies: bool = True,
    ) -> None:
        self.view, self.store, self.sites, self.session, self.applies = view, store, sites, session, applies
        # What each peer last said it has applied; absent: not heard from since it came up (or since this started).
        self.known: dict[str, Heard | NoLog] = {}
        self.rounds = asyncio.Condition()  # notified after each round and each change of doubt (for tests)
        self._wake = asyncio.Event()
        self._since: float | None = None
        self._problems: dict[str, str] = {}  # what was last said of each peer's answers (logged when it changes)
        self._pauses = 0  # pauses of this process noticed so far: an answer asked for before the last one is old
        # After a pause: the first round of health checks whose probes were all sent after it. A peer seen down
        # before then was judged by probes from before the pause (a probe in flight across it times out): it may
        # be up, and may have taken the purges this node missed.
        self._checked_after: int | None = None
        self.doubt(time.time())
        view.listeners.append(self._peer_changed)
        self.behind = Behind(store, sites)  # what each peer's last answer says it lacks, kept across pauses
        view.peer_lacks, view.peer_applied = self.behind.lacks, self._peer_applied

    def has_ours(self, peer_id: str) -> bool:
        """Has the peer applied every purge this node has, as far as its last answer says? A peer not heard from
        since it came up, or one that keeps no log (it is never told of a purge), counts as having none: its
        cached bytes are taken only while this node has applied none either. (What decides whether a peer's bytes of
        an object are taken or relayed is cluster.behind, per object; this says the peer lacks none at all.)"""
        known = self.known.get(peer_id)
        if known is None or isinstance(known, NoLog):
            return self.store.sync.known_to({})
        return self.store.sync.known_to(known.vector, known.retired)

    def _peer_applied(self, peer_id: str, origin: str, seq: int) -> None:
        """The peer has applied a purge (admin.purge). One passed on here went to every peer at once: a round asks
        them now, so that what it covers is relayed to them again within a round trip, not a cluster.interval."""
        self.behind.applied(peer_id, origin, seq)
        if not origin.startswith(f"{self.view.self_id}~"):
            self._wake.set()

    def doubt(self, since: float) -> None:
        if self._since is None:
            self._since = since
            self.store.doubt(since)
            metrics.PURGE_BEHIND.set(1)
            log.info("purge log: may have missed purges: what was stored before now is revalidated until caught up")

    @property
    def doubting(self) -> bool:
        """Is this node revalidating what it stored before it may have missed purges?"""
        return self._since is not None

    def caught_up(self) -> bool:
        """Has this node every purge that every peer which is up and keeps a log has?"""
        if not self.view.members_known:
            return False
        for m in self.view.ring.members:
            if m.id == self.view.self_id or not m.admin or self._down(m.id):
                continue
            heard = self.known.get(m.id)
            if heard is None or (not isinstance(heard, NoLog) and not self.store.sync.covers(heard.vector)):
                return False
        return True

    def _down(self, member_id: str) -> bool:
        """Is the peer down, as probes made since the last pause say? Seen down only by older ones, it counts
        as up: it is waited for (asked each round) until a probe after the pause fails, or it answers."""
        if self.view.is_up(member_id):
            return False
        return self._checked_after is None or self.view.failed_since(member_id, self._checked_after)

    def judge(self) -> None:
        if self.caught_up():
            self._checked_after = None
            if self._since is not None:
                self._since = None
                self.store.doubt(None)
                metrics.PURGE_BEHIND.set(0)
                log.info("purge log: caught up with every peer that is up")
        else:
            self.doubt(time.time())

    def _paused(self) -> None:
        """This process did not run for longer than cluster.timeout: a peer may have failed to pass a purge on
        meanwhile. Everything stored until now is doubted (a doubt already begun is moved to now: what was stored
        since it began may be what that purge removed), and a round asks the peers at once."""
        log.warning("this process was paused for over cluster.timeout: it may have missed purges")
        # What the peers said before the pause says nothing of the purges made during it: an answer that was on
        # its way then, read after it, made the round judge this node caught up, and the requests queued during
        # the pause were served the purged bytes.
        self._pauses += 1
        self._checked_after = self.view.rounds + 1
        self.known.clear()
        self._since = None
        self.doubt(time.time())
        self._wake.set()

    async def watch(self) -> None:
        """Watch for pauses of this process (Purging.watch_pauses), from when it first listens: tell the store the
        loop runs, four times per cluster.timeout."""
        self.store.watch_pauses(self.view.settings.timeout, self._paused)
        while True:
            await asyncio.sleep(self.view.settings.timeout / 4)
            self.store.tick()
            # A reload's timeout becomes the limit only now, after the gap the old one paced was judged by it:
            # a longer period judged by the old limit would be taken for a pause at every tick.
            self.store.set_pause_limit(self.view.settings.timeout)

    def _peer_changed(self, member_id: str, up: bool) -> None:
        """A peer came up (or joined): it may have taken purges this node has not heard of (unless it has no admin
        listener to ask: then there is nothing to wait for)."""
        self.known.pop(member_id, None)
        member = next((m for m in self.view.ring.members if m.id == member_id), None)
        if up and member is not None and member.admin:
            self.doubt(time.time())
            self._wake.set()

    async def run(self) -> None:
        """Forever, after the round a node makes before it listens: wait `cluster.interval` (or less, when a peer
        comes up: woken again if that happens during a round), then a round."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.view.settings.interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.round()

    def wake(self) -> None:
        """A round now: the admin listener has just started, and a peer that hears this node ask learns it can take
        purges (ClusterView.heard_from), whatever its health checks have seen yet."""
        self._wake.set()

    async def round(self) -> None:
        await self.store.catch_up()  # what another worker applied
        peers = [m for m in self.view.ring.members if m.id != self.view.self_id]
        await asyncio.gather(*(self._sync(m) for m in peers))
        self.behind.keep_only({m.id for m in peers})
        self.judge()
        await self._prune()
        self._measure()
        async with self.rounds:
            self.rounds.notify_all()

    async def _prune(self) -> None:
        """Drop from the vector the origins nothing can need any more (core.purgeprune), judged from every current
        member's last answer; only the worker that applies purges writes the log (the others read it)."""
        sync = self.store.sync
        if not self.applies or not self.view.members_known:
            return
        peers = {
            m.id: heard
            for m in self.view.ring.members
            if m.id != self.view.self_id and m.admin and not isinstance(heard := self.known.get(m.id), NoLog)
        }
        if pruning := prunable(sync, peers, time.time(), self.store.horizon):
            log.info("purge log: %d origins pruned from the vector", len(pruning.origins))
            await self.store.prune(pruning, time.time())

    def _measure(self) -> None:
        metrics.PURGE_VECTOR.labels("live").set(len(self.store.sync.vector))
        metrics.PURGE_VECTOR.labels("retired").set(len(self.store.sync.retired))

    async def _sync(self, peer: Member) -> None:
        if not peer.admin:
            metrics.PEER_PURGE_LOG.labels(peer.id).set(0)
            self.known[peer.id] = NoLog()
            self.behind.heard(peer.id, None)
            return
        for _ in range(MAX_BATCHES):
            pauses = self._pauses
            answer = await self._ask(peer)
            metrics.PEER_PURGE_LOG.labels(peer.id).set(isinstance(answer, Answer))  # read, or not (the cliff's cause)
            if answer is None or pauses != self._pauses:
                return  # not reachable now (the health view says whether that matters), or asked before a pause
            if isinstance(answer, NoLog):
                self.known[peer.id] = answer
                self.behind.heard(peer.id, None)
                return
            if not self.store.sync.covers(answer.vector):
                self.doubt(time.time())
            heard = Heard(answer.vector, answer.me, frozenset(answer.retired))
            self.behind.heard(peer.id, heard)  # what it had when it answered: at least that, whatever follows
            if not self.applies:
                self.known[peer.id] = heard
                return  # worker 0 applies it; this one sees it in the log
            sites, now = self.sites(), time.time()
            if answer.gap:
                await reset(self.store, sites, answer, now)
            taken = 0
            for entry in answer.entries:
                taken += await apply_entry(self.store, sites, entry, now)
            if taken:
                log.info("purge log: %d purges taken from %s", taken, peer.id)
                metrics.PURGE_CATCHUPS.labels("entries").inc(taken)
            if pauses != self._pauses:  # paused while it applied them: the answer was made before that pause
                return
            self.known[peer.id] = heard
            if not answer.more:
                return

    async def _ask(self, peer: Member) -> Answer | NoLog | None:
        sync = self.store.sync
        asking: dict[str, object] = {"vector": dict(sync.vector), "retired": sorted(sync.retired)}
        asking["node"] = self.view.self_id
        if admin := next((m.admin for m in self.view.ring.members if m.id == self.view.self_id), None):
            asking["admin"] = admin  # where a peer whose file does not name this node passes purges on (view.asked)
        body = json.dumps(asking).encode()
        auth = nodeauth.authorization(peer_token(self.view.settings.key), "POST", AFTER_PATH, body, time.time())
        problem = ""
        try:
            async with self.session.post(
                f"http://{peer.admin}{AFTER_PATH}",
                data=body,
                headers={"Authorization": auth, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.view.settings.timeout),
            ) as r:
                if r.status == 404:
                    return NoLog()
                if r.status != 200:
                    problem = f"answered {r.status} (another cluster key?)"
                elif r.content_length is None or r.content_length > MAX_ANSWER:
                    problem = f"sent an answer of no length or over {MAX_ANSWER} bytes"
                elif (answer := parse_answer(await r.json(content_type=None))) is None:
                    problem = "sent an answer that is not one"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None  # not reachable: the health checks say so
        if problem != self._problems.get(peer.id, ""):  # said when it starts or changes, not every round
            self._problems[peer.id] = problem
            if problem:
                log.warning("purge log: %s %s: this node cannot catch up from it", peer.id, problem)
        return None if problem else answer
