"""Peers behind this node's purges: which requests this node answers itself rather than forward to an owner that
may still hold what a purge applied here removed (core.purgegap holds the rule; this holds what it is asked with).

What it is asked with: each peer's last purge-log answer (PurgeSync tells it), kept across this node's pauses and
the peer's restarts, because a node's vector only grows (a wiped node starts a new origin, and doubts its cache
until it has caught up): an old answer still says which purges the peer had at least. A peer never heard from, or
keeping no log (it is never told of a purge), counts as having none. The index of this node's purges is rebuilt
when they change (SyncLog and the sites are immutable, replaced whole): each lookup is a few dict probes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgecache import metrics
from edgecache.config import Site
from edgecache.core import purgegap
from edgecache.core.purge import MAX_ENTRIES, SyncLog
from edgecache.core.purgeprune import Heard
from edgecache.storage.store import Store

# Objects counted per peer since its last answer (edgecache_peer_purge_behind_total counts each once): past it, each
# request for an object not yet counted counts, rather than the set growing.
MAX_COUNTED = 4096
_NONE = Heard({})


class Behind:
    def __init__(self, store: Store, sites: Callable[[], tuple[Site, ...]]) -> None:
        self.store, self.sites = store, sites
        self.last: dict[str, Heard] = {}  # each peer's last answer (absent: never heard, or it keeps no log)
        self._covering: tuple[SyncLog, tuple[Site, ...], purgegap.Covering] | None = None
        # Per peer, for this node's purges and its last answer: (sync, heard, lacks any of ours, lacks some we no
        # longer keep). known_to and after() walk the whole vector: once per change, not per request.
        self._judged: dict[str, tuple[SyncLog, Heard, bool, bool]] = {}
        self._counted: dict[str, set[str]] = {}
        # Per peer, purges it is known to have applied past its last answer: it confirmed this node's pass-on, or
        # it passed the purge on itself (admin.purge). So a purge every node confirmed keeps nothing from them.
        self._applied: dict[str, frozenset[tuple[str, int]]] = {}  # replaced whole: read per request, added rarely

    def heard(self, peer_id: str, heard: Heard | None) -> None:
        """The peer's purge log answered `heard` (None: it keeps none)."""
        heard = heard or _NONE
        if self.last.get(peer_id) != heard:
            self.last[peer_id] = heard
            self._counted.pop(peer_id, None)
            if applied := self._applied.get(peer_id):
                self._applied[peer_id] = frozenset((o, n) for o, n in applied if n > heard.vector.get(o, 0))

    def applied(self, peer_id: str, origin: str, seq: int) -> None:
        """The peer has applied the purge (origin, seq), whatever its last answer said (at most MAX_ENTRIES a peer:
        past that, it waits for the peer's next answer)."""
        applied = self._applied.get(peer_id, frozenset())
        if len(applied) < MAX_ENTRIES:
            self._applied[peer_id] = applied | {(origin, seq)}
            self._judged.pop(peer_id, None)

    def keep_only(self, members: set[str]) -> None:
        """Forget the peers that are members no more (bounded by the ring)."""
        for gone in [p for p in self.last if p not in members]:
            del self.last[gone]
        for table in (self._judged, self._counted, self._applied):
            for gone in [p for p in table if p not in members]:
                del table[gone]

    def lacks(self, peer_id: str, site: str, host: str, path: str, primary: str, counted: bool = True) -> str | None:
        """The kind of a purge applied here that covers the object and that the peer has not applied, as far as
        its last answer says (purgegap.ALL: it lacks purges this node no longer keeps); None: relay it."""
        sync = self.store.sync
        heard = self.last.get(peer_id, _NONE)
        applied = self._applied.get(peer_id, frozenset())
        if applying := self.store.applying():
            # Being applied here: the object's record may have changed already, so a hot copy or a look-aside filled
            # now would take the peer's bytes as made after the purge, and keep them.
            covering = purgegap.index(applying, {s.name: s.key_query for s in self.sites()})
            kind = purgegap.lacked(covering, heard.vector, heard.retired, site, host, path, primary, applied)
            if kind is not None:
                if counted:
                    self._count(peer_id, primary, kind)
                return kind
        judged = self._judged.get(peer_id)
        if judged is None or judged[0] is not sync or judged[1] is not heard:
            judged = self._judged[peer_id] = (sync, heard, *self._judge(sync, heard, applied))
        if not judged[2]:
            return None
        kind = purgegap.ALL if judged[3] else None
        if kind is None:
            covering = self._index(sync)
            kind = purgegap.lacked(covering, heard.vector, heard.retired, site, host, path, primary, applied)
        if kind is not None and counted:
            self._count(peer_id, primary, kind)
        return kind

    def _judge(self, sync: SyncLog, heard: Heard, applied: frozenset[tuple[str, int]]) -> tuple[bool, bool]:
        """(lacks any purge applied here, lacks one this node no longer keeps)."""
        if sync.known_to(heard.vector, heard.retired):
            return False, False
        missing = sync.after(heard.vector, MAX_ENTRIES, heard.retired, time.time(), self.store.horizon)
        return missing.gap or any((e.origin, e.seq) not in applied for e in missing.entries), missing.gap

    def _index(self, sync: SyncLog) -> purgegap.Covering:
        sites = self.sites()
        if self._covering is None or self._covering[0] is not sync or self._covering[1] is not sites:
            covering = purgegap.index(sync.entries, {s.name: s.key_query for s in sites})
            self._covering = (sync, sites, covering)
        return self._covering[2]

    def _count(self, peer_id: str, primary: str, kind: str) -> None:
        counted = self._counted.setdefault(peer_id, set())
        if primary in counted:
            return
        if len(counted) < MAX_COUNTED:
            counted.add(primary)
        metrics.PEER_PURGE_BEHIND.labels(peer_id, kind).inc()
