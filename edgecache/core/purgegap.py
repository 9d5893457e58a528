"""Which objects a peer may still hold as they were before a purge applied here, because it has not applied that
purge yet: a request for one is never relayed to that peer's cache (cluster.purgesync.PurgeSync.lacks).

A purge reaches the nodes one at a time (admin.purge tells each peer in turn; one that was down, cut off or slow
catches up from the purge log later). Meanwhile an owner that lacks it answers a forwarded request from the very
bytes the purge removed here, and the node that answered the purge 200 would serve them. Only the objects such a
purge covers are kept from the owner, so a purge costs the origin one fill per purged object per forwarding node,
never a forwarding node's whole traffic: every purge this node keeps (SyncLog.entries) is indexed by what it covers,
its URL's cache key or its scope (a directory of a host, or a site), and a request's key and scopes are looked up,
a few dict probes. A peer that lacks purges this node no longer keeps (behind its floor) may lack any: then every
object counts as covered until it catches up (it resets: core.purge.Answer.gap).

Pure: entries, vectors and keys in, answers out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgecache.core.keys import BadTarget, make_key
from edgecache.core.purge import Entry, Scope, Vector, scopes_of

ALL = "all"  # the kind told when the peer lacks purges this node no longer keeps: they may cover anything


def reach(entry: Entry, key_query: Iterable[str]) -> str | Scope:
    """What a purge covers on a node that keys its site with `key_query`: a URL's primary key, or a scope. A URL that
    node cannot key (it keys the site otherwise) is purged as its whole site: the scope covers the URL. The one rule
    of what a purge removes (cluster.purgesync.apply_entry) and of what it keeps from a peer that lacks it."""
    if entry.kind == "url":
        try:
            return make_key(entry.site, entry.host, entry.path, key_query).primary
        except BadTarget:
            return (entry.site, "", "")
    if entry.kind == "prefix":
        return (entry.site, entry.host, entry.path)
    return (entry.site, "", "")


# What covers a key (a primary or a scope): for each origin, the newest purge it numbered of that key, and its kind.
Newest = Mapping[str, tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Covering:
    """The purges this node keeps, by what they cover (index)."""

    urls: Mapping[str, Newest]  # primary key -> the newest URL purge of it, by origin
    scopes: Mapping[Scope, Newest]  # scope -> the newest prefix or site purge of it (or URL purge made a site's)


def index(entries: Iterable[Entry], key_queries: Mapping[str, Iterable[str]]) -> Covering:
    """The Covering of `entries` on a node whose sites key as `key_queries` says (site name -> key_query); a purge of a
    site the node does not serve covers nothing here."""
    urls: dict[str, dict[str, tuple[int, str]]] = {}
    scopes: dict[Scope, dict[str, tuple[int, str]]] = {}
    for entry in entries:
        key_query = key_queries.get(entry.site)
        if key_query is None:
            continue
        where = reach(entry, key_query)
        newest = urls.setdefault(where, {}) if isinstance(where, str) else scopes.setdefault(where, {})
        if entry.seq > newest.get(entry.origin, (0, ""))[0]:
            newest[entry.origin] = (entry.seq, entry.kind)
    return Covering(urls, scopes)


def lacked(
    covering: Covering,
    vector: Vector,
    retired: frozenset[str],
    site: str,
    host: str,
    path: str,
    primary: str,
    applied: frozenset[tuple[str, int]] = frozenset(),
) -> str | None:
    """The kind of a purge kept here that covers the object (`primary`, at `path` of `host` in `site`) and that a
    peer whose purge log says `vector` (with the origins it pruned, `retired`, whose every purge it has; and the
    purges (origin, number) it is known to have `applied` since) has not applied; None when it has applied the
    newest such purge of each origin (which removed whatever the older ones did)."""

    def missing(newest: Newest | None) -> str | None:
        for origin, (seq, kind) in (newest or {}).items():
            if seq > vector.get(origin, 0) and origin not in retired and (origin, seq) not in applied:
                return kind
        return None

    if (kind := missing(covering.urls.get(primary))) is not None:
        return kind
    for scope in scopes_of(site, host, path):
        if (kind := missing(covering.scopes.get(scope))) is not None:
            return kind
    return None
