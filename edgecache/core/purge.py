"""Purges without scanning keys: generations for sites and directory prefixes, times for soft purges.

A hard purge of a site or a directory gives it a new generation; every cache key under it includes the
generations of its site and of each ancestor directory, so everything stored before is out of reach at once,
whatever its variants and slices. Lookup cost is one dict probe per path segment, and only for the sites and
directories ever purged. A soft purge records a time: entries stored before it count as stale and revalidate.

The table stays small because a purge drops the marks it makes useless (purged(), the one place that rule
lives), and it is stored as a log of purges replayed through the same function (from_log()):
- a hard purge of a scope drops every mark strictly under it. Whatever was stored under those marks has the
  scope's old generation in its key, so is out of reach already; what is stored from now on has the new
  generation, which no key had before, so a key without the dropped marks' generations cannot meet an old
  object. It also drops the scope's own soft time: everything stored before now is out of reach.
- a soft purge drops soft times strictly under it that are not later than its own (lookup takes the latest of
  all that cover an object, so they can no longer decide anything); a mark left with neither goes.
A mark is never dropped for its age: the disk tier keeps an object until it is evicted, however stale, and
dropping a generation would give the keys of everything stored before that purge back to lookups. Past
MAX_MARKS scopes of its site (or MAX_TOTAL of all sites), a purge of a new scope is refused (TableFull); one of
a broader scope takes their place. A purge of a whole site is never refused for the other sites' marks: it leaves
its site one mark, so the table holds at most MAX_TOTAL and one a site, and a provider can always purge its own
site, whoever filled the table.

The cluster passes purges on as Entries (SyncLog, below): each has an identity, the node incarnation that took
it from an operator and its number there, so a node applies each one once however often it hears of it, and can
answer a peer "the purges after what you have" from the entries it keeps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

# (Re-exported: the cluster's side of purges is imported from here.)
from edgecache.core.origins import HORIZON as HORIZON
from edgecache.core.origins import MAX_ORIGINS as MAX_ORIGINS
from edgecache.core.origins import MAX_TEXT
from edgecache.core.origins import Retired as Retired
from edgecache.core.origins import parse_retired as parse_retired
from edgecache.core.origins import parse_tombstones as parse_tombstones
from edgecache.core.origins import parse_vector as parse_vector

Scope = tuple[str, str, str]  # (site, host, directory); host "" and directory "" mean the whole site
MAX_MARKS = 10_000
# And of all sites together: every worker holds the table, and every lookup may walk it (a site's share alone
# would let a node of many sites hold millions). Ten providers filling their shares reach it.
MAX_TOTAL = 10 * MAX_MARKS


class TableFull(ValueError):
    """The purge would leave more than MAX_MARKS scopes of its site in the table; the message is the reason for
    the 429."""


@dataclass(frozen=True, slots=True)
class Mark:
    generation: str = ""
    soft_before: float = 0.0  # entries stored before this are stale


def _of(site: str, marks: Mapping[Scope, Mark]) -> int:
    return sum(1 for key in marks if key[0] == site)


def covers(outer: Scope, inner: Scope) -> bool:
    """Is every object under `inner` under `outer` too? (A site covers all of it; a directory its own host's
    subdirectories.)"""
    site, host, path = outer
    return inner[0] == site and (not host or (inner[1] == host and inner[2].startswith(path)))


def scopes_of(site: str, host: str, path: str) -> list[Scope]:
    """Every scope a purge of which covers an object: its site, and each directory of its path on its host."""
    scopes = [(site, "", "")]
    end = 0
    while (end := path.find("/", end) + 1) > 0:
        scopes.append((site, host, path[:end]))
    return scopes


@dataclass(frozen=True, slots=True, weakref_slot=True)  # a remembered hit names its table weakly (proxy.hit)
class PurgeTable:
    marks: dict[Scope, Mark] = field(default_factory=dict)
    # While this node may have missed purges (it has not caught up with its peers since it started, since a peer
    # came back, or since it saw a peer ahead of it): what it stored before this time counts as stale, so it is
    # revalidated before it is served. Any purge it missed was taken before the doubt began; what it fetched
    # since is newer than that purge. Never written to the log: a node that starts doubts again. 0: no doubt.
    unsure_before: float = 0.0

    def lookup(self, site: str, host: str, path: str) -> tuple[str, float]:
        """(generation suffix for the key, soft-purge time) for an object."""
        if not self.marks:
            return "", self.unsure_before
        gens: list[str] = []
        soft = self.unsure_before
        for scope in scopes_of(site, host, path):
            mark = self.marks.get(scope)
            if mark is not None:
                if mark.generation:
                    gens.append(mark.generation)
                soft = max(soft, mark.soft_before)
        return ".".join(gens), soft

    def purged(
        self, scope: Scope, generation: str | None, soft_at: float | None, limit: int | None = MAX_MARKS
    ) -> PurgeTable:
        """The table after a hard purge (a new `generation`) or a soft one (at `soft_at`) of `scope`, without the
        marks that purge makes useless (see the module's docstring). TableFull past `limit` scopes."""
        marks: dict[Scope, Mark] = {}
        for key, mark in self.marks.items():
            if key == scope or not covers(scope, key):
                marks[key] = mark
            elif generation is None and mark.generation:
                marks[key] = Mark(mark.generation, mark.soft_before if mark.soft_before > (soft_at or 0.0) else 0.0)
            elif generation is None and mark.soft_before > (soft_at or 0.0):
                marks[key] = mark
        old = marks.get(scope, Mark())
        if generation is not None:
            marks[scope] = Mark(generation, 0.0)
        else:
            marks[scope] = Mark(old.generation, max(old.soft_before, soft_at or 0.0))
        # Each site's own bound: one provider's purges must not leave another's refused.
        site = scope[0]
        if limit is not None and (n := _of(site, marks)) > limit and n > (held := _of(site, self.marks)):
            raise TableFull(  # a share over the bound (a smaller bound, an old log) may still shrink
                f"the purge table holds {held} directories of site {site!r} (at most {limit} a site): purge a "
                "broader prefix or the whole site, which takes the place of those under it"
            )
        whole = scope[1:] == ("", "")  # the site's one mark from now on: never refused for the others' (see above)
        if limit is not None and not whole and len(marks) > max(limit * MAX_TOTAL // MAX_MARKS, len(self.marks)):
            raise TableFull(
                f"the purge table holds {len(self.marks)} directories of all sites (at most "
                f"{limit * MAX_TOTAL // MAX_MARKS}): purge a broader prefix or a whole site"
            )
        return PurgeTable(marks, self.unsure_before)

    def to_bytes(self) -> bytes:
        """The table as one line (a snapshot): a log starts with it."""
        return json.dumps([[*k, m.generation, m.soft_before] for k, m in self.marks.items()]).encode()

    @staticmethod
    def op(
        scope: Scope, generation: str | None, soft_at: float | None, entry: Entry | None = None, at: float = 0.0
    ) -> bytes:
        """One purge as one line of the log (with the cluster's entry for it, when it has one, applied at `at`)."""
        row: dict[str, object] = {"purge": list(scope), "generation": generation, "soft": soft_at}
        if entry is not None:
            row["entry"], row["at"] = entry.to_json(), at
        return json.dumps(row).encode() + b"\n"

    @classmethod
    def from_log(cls, data: bytes) -> PurgeTable:
        """The table of a log (read_log)."""
        return read_log(data)[0]

    @classmethod
    def from_bytes(cls, data: bytes) -> PurgeTable:
        """A snapshot line: the table's rows, or (with the sync state) {"marks": rows, "sync": ...}."""
        try:
            doc = json.loads(data)
            rows = doc["marks"] if isinstance(doc, dict) else doc
            return cls({(str(r[0]), str(r[1]), str(r[2])): Mark(str(r[3]), float(r[4])) for r in rows})
        except (ValueError, TypeError, IndexError, KeyError):
            return cls()


# --- the cluster's purges: identities, the entries a node keeps, and what a peer lacks ---------------------------

# Entries a node keeps to answer "the purges after what you have"; a peer that lacks older ones than that can only
# reset (SyncLog.after). A URL is at most 8 KiB, so the log's snapshot stays within a few MiB.
MAX_ENTRIES = 2048
BATCH = 128  # entries in one answer to a peer: at most about 1 MiB
KINDS = ("url", "prefix", "site")


@dataclass(frozen=True, slots=True)
class Entry:
    """One purge as the nodes pass it on. (origin, seq) is its identity: the node incarnation that took it from an
    operator (`node id~random`, new when a node starts without its log, so a wiped node never reuses a number)
    and its number there, 1, 2, 3... What it purges is a site name, a host and a normalised path, as
    admin.purge.parse_order gives them."""

    origin: str
    seq: int
    kind: str  # "url" | "prefix" | "site"
    site: str
    host: str = ""
    path: str = ""
    soft: bool = False

    def to_json(self) -> list[object]:
        return [self.origin, self.seq, self.kind, self.site, self.host, self.path, self.soft]

    @classmethod
    def from_json(cls, row: object) -> Entry | None:
        """The entry a row (from the log or a peer) describes, or None for anything malformed; never raises."""
        if not isinstance(row, list) or len(row) != 7:
            return None
        origin, seq, kind, site, host, path, soft = row
        texts = (origin, site, host, path)
        if not all(isinstance(t, str) and len(t) <= MAX_TEXT for t in texts) or not origin or not site:
            return None
        if type(seq) is not int or seq < 1 or kind not in KINDS or not isinstance(soft, bool):
            return None
        return cls(origin, seq, kind, site, host, path, soft)


Vector = Mapping[str, int]  # origin -> every purge it numbered up to this one is applied here
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class Answer:
    """What a node tells a peer that sent its vector: the entries it lacks (oldest first, at most BATCH), whether
    there are more, and `gap`: it lacks purges this node no longer keeps, so it can only reset (purge every site
    hard) and adopt `vector`, this node's own."""

    entries: tuple[Entry, ...]
    more: bool
    gap: bool
    vector: Vector
    me: str | None = None  # the answering node's own origin ("": it numbered none; None: it did not say)
    retired: Mapping[str, Retired] = field(default_factory=dict)  # the origins it pruned (core.purgeprune)


@dataclass(frozen=True, slots=True)
class SyncLog:
    me: str = ""  # this node's origin (`node id~random`), set when it first numbers a purge
    entries: tuple[Entry, ...] = ()  # the newest MAX_ENTRIES purges applied here, in the order applied
    vector: Vector = field(default_factory=dict)
    above: Mapping[str, frozenset[int]] = field(default_factory=dict)  # applied past the vector (out of order)
    floor: Vector = field(default_factory=dict)  # purges up to these are no longer among the entries
    # When this node last applied a purge each origin numbered (0: not known, a log before pruning: see dated()).
    seen: Mapping[str, float] = field(default_factory=dict)
    # Origins pruned from the vector (core.purgeprune): every purge each numbered, up to `top`, is applied here
    # and was by every member; kept, with when it was pruned, for two HORIZONs, so that a peer that has not
    # pruned it yet is neither sent it again nor taken for ahead, and one that lacks it is told to reset.
    retired: Mapping[str, Retired] = field(default_factory=dict)

    def has(self, origin: str, seq: int) -> bool:
        if origin in self.retired:  # it numbers no more purges, and every one it did is applied here
            return True
        return seq <= self.vector.get(origin, 0) or seq in self.above.get(origin, ())

    def covers(self, vector: Vector) -> bool:
        """Has this node applied every purge a node with `vector` has? (Those of an origin pruned here, yes.)"""
        return all(self.vector.get(o, 0) >= n for o, n in vector.items() if o not in self.retired)

    def known_to(self, vector: Vector, retired: frozenset[str] = frozenset()) -> bool:
        """Has a node with `vector`, which pruned `retired`, applied every purge this node has (those past its
        vector too)? (cluster.behind asks it once per change, before it looks for the purges that node lacks.)
        An origin it pruned had every purge applied there (core.purgeprune)."""
        if not all(vector.get(o, 0) >= n for o, n in self.vector.items() if o not in retired):
            return False
        return all(vector.get(o, 0) >= max(seqs) for o, seqs in self.above.items() if seqs and o not in retired)

    def added(self, entry: Entry, at: float = 0.0) -> SyncLog:
        """After `entry` is applied (at time `at`): the vector moves on while the numbers are contiguous; the
        oldest entries past MAX_ENTRIES go, and the floor says so."""
        if entry.origin in self.retired:
            return self
        seen = {**self.seen, entry.origin: max(at, self.seen.get(entry.origin, 0.0))}
        vector, above = dict(self.vector), dict(self.above)
        done, extra = vector.get(entry.origin, 0), set(above.pop(entry.origin, ())) | {entry.seq}
        while done + 1 in extra:
            done += 1
            extra.discard(done)
        vector[entry.origin] = done
        if kept := frozenset(s for s in extra if s > done):
            above[entry.origin] = kept
        entries, floor = (*self.entries, entry), dict(self.floor)
        for old in entries[: max(0, len(entries) - MAX_ENTRIES)]:
            floor[old.origin] = max(floor.get(old.origin, 0), old.seq)
        return replace(self, entries=entries[-MAX_ENTRIES:], vector=vector, above=above, floor=floor, seen=seen)

    def adopted(self, vector: Vector, at: float = 0.0, retired: Mapping[str, Retired] | None = None) -> SyncLog:
        """After a reset: every purge `vector` counts is as good as applied (the reset purged more than all of
        them), though this node keeps none of them to pass on; so are those of the origins the peer `retired`,
        which this node retires as it did (else every later answer would tell it to reset again)."""
        mine, above, floor, seen = dict(self.vector), dict(self.above), dict(self.floor), dict(self.seen)
        for origin, n in vector.items():
            if n > mine.get(origin, 0) and origin not in self.retired:
                mine[origin] = floor[origin] = n
                seen[origin] = max(at, seen.get(origin, 0.0))
                if kept := frozenset(s for s in above.pop(origin, ()) if s > n):
                    above[origin] = kept
        done = replace(self, vector=mine, above=above, floor=floor, seen=seen)
        return done._without({o: r for o, r in (retired or {}).items() if o not in self.retired}, frozenset())

    def pruned(self, origins: frozenset[str], forget: frozenset[str], at: float) -> SyncLog:
        """Without `origins` (core.purgeprune.prunable: each becomes retired at `at`) and without the retired
        origins `forget`."""
        if not origins and not forget:
            return self
        tops = {o: max((self.vector.get(o, 0), *self.above.get(o, ()))) for o in origins}
        return self._without({o: Retired(top, at) for o, top in tops.items()}, forget)

    def _without(self, gone: Mapping[str, Retired], forget: frozenset[str]) -> SyncLog:
        retired = {**{o: r for o, r in self.retired.items() if o not in forget}, **gone}

        def kept(m: Mapping[str, _V]) -> dict[str, _V]:
            return {o: v for o, v in m.items() if o not in gone}

        entries = tuple(e for e in self.entries if e.origin not in gone)
        return replace(
            self,
            entries=entries,
            vector=kept(self.vector),
            above=kept(self.above),
            floor=kept(self.floor),
            seen=kept(self.seen),
            retired=retired,
        )

    def dated(self, now: float, before: Mapping[str, float]) -> SyncLog:
        """Origins the log does not say when this node last heard of (a log written before pruning) count as
        heard of when this process first read it (`before`: what it held) or `now`: pruned no sooner than a
        HORIZON after that."""
        if all(self.seen.get(o, 0.0) > 0.0 for o in self.vector):
            return self
        known = {o: t for o, t in self.seen.items() if t > 0.0}
        return replace(self, seen={o: known.get(o) or before.get(o) or now for o in self.vector})

    def after(
        self,
        vector: Vector,
        limit: int = BATCH,
        retired: frozenset[str] = frozenset(),
        now: float = 0.0,
        horizon: float = HORIZON,
    ) -> Answer:
        """What a peer with `vector`, which pruned the origins `retired`, lacks (see Answer). It lacks purges this
        node no longer keeps (a gap) when it is behind the floor, or behind an origin pruned here that it has not
        pruned: a node that was not a member when the others pruned it. One that lacks the origin altogether is
        told so only within horizon/2 of the prune: a peer that pruned it a round before this node and forgot it
        a horizon later must not be taken for one (every node it told would purge every site)."""
        gap = any(vector.get(o, 0) < n for o, n in self.floor.items() if o not in retired)
        for origin, r in self.retired.items():
            have = vector.get(origin)
            if origin not in retired and (now - r.at < horizon / 2 if have is None else have < r.top):
                gap = True
        missing = [e for e in self.entries if e.seq > vector.get(e.origin, 0) and e.origin not in retired]
        return Answer(tuple(missing[:limit]), len(missing) > limit, gap, self.vector, self.me, self.retired)

    def to_json(self) -> dict[str, object]:
        return {
            "me": self.me,
            "vector": dict(self.vector),
            "above": {o: sorted(s) for o, s in self.above.items()},
            "floor": dict(self.floor),
            "entries": [e.to_json() for e in self.entries],
            "seen": dict(self.seen),
            "retired": {o: [r.top, r.at] for o, r in self.retired.items()},
        }

    @classmethod
    def from_json(cls, doc: object) -> SyncLog:
        """The state a snapshot holds; whatever is malformed in it counts as absent (never raises)."""
        if not isinstance(doc, dict):
            return cls()
        me = doc.get("me")
        above = doc.get("above")
        rows = doc.get("entries")
        return cls(
            me if isinstance(me, str) else "",
            tuple(e for r in (rows if isinstance(rows, list) else []) if (e := Entry.from_json(r)) is not None),
            parse_vector(doc.get("vector"), None) or {},
            {
                o: frozenset(n for n in ns if type(n) is int)
                for o, ns in (above.items() if isinstance(above, dict) else [])
                if isinstance(o, str) and isinstance(ns, list)
            },
            parse_vector(doc.get("floor"), None) or {},
            _times(doc.get("seen")),
            parse_tombstones(doc.get("retired"), None) or {},
        )


def _times(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {o: float(t) for o, t in value.items() if isinstance(o, str) and isinstance(t, int | float)}


def snapshot(table: PurgeTable, sync: SyncLog) -> bytes:
    """The log's first line: the table, and the sync state when there is one (a log without is read as before)."""
    if sync == SyncLog():
        return table.to_bytes()
    rows = [[*k, m.generation, m.soft_before] for k, m in table.marks.items()]
    return json.dumps({"marks": rows, "sync": sync.to_json()}).encode()


def entry_line(entry: Entry, at: float = 0.0) -> bytes:
    """A purge that changes no mark of the table (of a URL: its record changed), as one line of the log."""
    return json.dumps({"entry": entry.to_json(), "at": at}).encode() + b"\n"


def adopt_line(vector: Vector, at: float = 0.0, retired: Mapping[str, Retired] | None = None) -> bytes:
    tombstones = {o: [r.top, r.at] for o, r in (retired or {}).items()}
    return json.dumps({"adopt": dict(vector), "at": at, "retired": tombstones}).encode() + b"\n"


def prune_line(origins: frozenset[str], forget: frozenset[str], at: float) -> bytes:
    """SyncLog.pruned as one line of the log."""
    return json.dumps({"prune": sorted(origins), "forget": sorted(forget), "at": at}).encode() + b"\n"


def me_line(me: str) -> bytes:
    return json.dumps({"me": me}).encode() + b"\n"


def read_log(data: bytes) -> tuple[PurgeTable, SyncLog]:
    """A snapshot line, then the purges since, replayed through purged() and SyncLog.added(). A line that does
    not decode (the last one, torn by a crash mid-write) is skipped."""
    lines = data.split(b"\n")
    table = PurgeTable.from_bytes(lines[0])
    try:
        head = json.loads(lines[0])
    except ValueError:
        head = None
    sync = SyncLog.from_json(head.get("sync")) if isinstance(head, dict) else SyncLog()
    for line in lines[1:]:
        try:
            row = json.loads(line)
            if "purge" in row:
                scope = (str(row["purge"][0]), str(row["purge"][1]), str(row["purge"][2]))
                gen, soft = row["generation"], row["soft"]
                table = table.purged(
                    scope, None if gen is None else str(gen), None if soft is None else float(soft), None
                )
            at = float(row.get("at", 0.0))
            if (entry := Entry.from_json(row.get("entry"))) is not None:
                sync = sync.added(entry, at)
            if (vector := parse_vector(row.get("adopt"), None)) is not None:
                sync = sync.adopted(vector, at, parse_tombstones(row.get("retired", {}), None))
            if "prune" in row:
                pruned, forget = parse_retired(row["prune"], None), parse_retired(row.get("forget"), None)
                if pruned is not None and forget is not None:
                    sync = sync.pruned(pruned, forget, at)
            if isinstance(row.get("me"), str):
                sync = replace(sync, me=row["me"])
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            continue
    return table, sync


def peer_token(key: bytes) -> str:
    """The bearer token nodes present on each other's admin API to pass purges on: derived from the cluster key
    (so there is no second secret to share, and a new key makes a new token), never the key itself."""
    return hmac.new(key, b"edgecache admin peer token 1", hashlib.sha256).hexdigest()
