"""Pruning the purge vector (core.purgeprune), without a network: a cluster whose nodes come and go keeps its
vectors within what peers take, and no purge is lost to a prune."""

from __future__ import annotations

import json
from pathlib import Path

from edgecache.core.purge import (
    MAX_ORIGINS,
    Entry,
    PurgeTable,
    Retired,
    SyncLog,
    adopt_line,
    entry_line,
    parse_retired,
    parse_tombstones,
    parse_vector,
    prune_line,
    read_log,
)
from edgecache.core.purgeprune import HORIZON, Heard, Pruning, prunable
from edgecache.storage.purgelog import PurgeLog

DAY = 86400.0


def url(origin: str, seq: int, path: str = "/a") -> Entry:
    return Entry(origin, seq, "url", "videos", "video.test", path)


def heard(sync: SyncLog) -> Heard | None:
    """What a peer hears of `sync` over the wire (as cluster.purgesync asks, admin.purge answers and purgesync
    reads the answer); None when either side would refuse it (400, or an answer that is not one)."""
    asked = json.loads(json.dumps({"vector": dict(sync.vector), "retired": sorted(sync.retired)}))
    if parse_vector(asked["vector"]) is None or parse_retired(asked["retired"]) is None:
        return None
    told = {o: [r.top, r.at] for o, r in sync.retired.items()}
    doc = json.loads(json.dumps({"vector": dict(sync.vector), "retired": told, "me": sync.me}))
    vector, retired = parse_vector(doc["vector"]), parse_tombstones(doc["retired"])
    return None if vector is None or retired is None else Heard(vector, doc["me"], frozenset(retired))


# Incarnations in test_incarnations_that_come_and_go_for_weeks_keep_the_vectors_far_below_the_bound: ten HORIZONs.
# Its bound on what a node holds (two horizons' worth, 4 * HORIZON / 1800 + 4 = 388) is passed without pruning at
# incarnation 388 (day 8); from the second horizon on, each one adds as many as pruning takes away, so further
# horizons repeat the same steps (3000 incarnations, 62 days, took 10 s of the unit tests' time).
INCARNATIONS = round(10 * HORIZON / 1800)


def test_incarnations_that_come_and_go_for_weeks_keep_the_vectors_far_below_the_bound() -> None:
    # Three nodes that stay; pod incarnations, two an hour for 20 days, each taking one purge from an operator that
    # reaches every node. Without pruning the vectors passed 2048 origins on day 43 and every peer refused them.
    nodes = {name: SyncLog(me=f"{name}~0") for name in ("a", "b", "c")}
    for k in range(INCARNATIONS):
        now = k * 1800.0
        entry = url(f"pod-{k}~{k:04x}", 1, f"/p{k}")
        for name in nodes:
            nodes[name] = nodes[name].added(entry, now)
        for name, sync in nodes.items():
            peers = {other: heard(nodes[other]) for other in nodes if other != name}
            assert all(h is not None for h in peers.values()), f"purge sync refused at incarnation {k}"
            if pruning := prunable(sync, peers, now):
                nodes[name] = sync.pruned(pruning.origins, pruning.forget, now)
            held = len(nodes[name].vector) + len(nodes[name].retired)
            assert held <= 4 * HORIZON / 1800 + 4, (k, held)  # two horizons' worth, and the nodes' own
    assert all(len(s.vector) < MAX_ORIGINS // 4 for s in nodes.values())
    k = INCARNATIONS - 1
    last = url(f"pod-{k}~{k:04x}", 1, f"/p{k}")
    assert all(s.has(last.origin, 1) for s in nodes.values())


def test_an_origin_stays_while_anything_may_need_it() -> None:
    now = 10 * DAY
    sync = SyncLog(me="a~1").added(url("gone~1", 1), 0.0).added(url("gone~1", 2), 0.0).added(url("b~2", 1), 0.0)
    has_all = Heard({"gone~1": 2, "b~2": 1}, "b~2")
    assert prunable(sync, {"b": has_all}, now) == Pruning(frozenset({"gone~1"}))
    assert prunable(sync, {"b": has_all, "c": None}, now) == Pruning()  # a member not heard from may lack any
    assert prunable(sync, {"b": Heard({"gone~1": 1, "b~2": 1}, "b~2")}, now) == Pruning()  # one lacks purge 2
    assert prunable(sync, {"b": has_all}, HORIZON - 1.0) == Pruning()  # heard of within the horizon
    assert prunable(sync, {"b": Heard({"gone~1": 2, "b~2": 1}, "gone~1")}, now).origins == {"b~2"}  # gone is b's now
    # Node "gone" is a member that does not say which origin is its own (a version before pruning): its stay.
    assert prunable(sync, {"gone": Heard({"gone~1": 2, "b~2": 1})}, now).origins == {"b~2"}
    assert prunable(sync, {"b": Heard({"b~2": 1}, "b~2", frozenset({"gone~1"}))}, now).origins == {"gone~1"}
    # Out of order: purge 4 is applied here past the vector, 3 is not: it may still come, and would be refused.
    ahead = sync.added(url("gone~1", 4), 0.0)
    assert prunable(ahead, {"b": has_all}, now) == Pruning()
    assert prunable(ahead, {"b": Heard({"gone~1": 4, "b~2": 1}, "b~2")}, now) == Pruning()
    # Behind a member, which has purge 3 that this node lacks: kept until it is taken from that member.
    assert prunable(sync, {"b": Heard({"gone~1": 3, "b~2": 1}, "b~2")}, now) == Pruning()


def test_a_pruned_origin_is_never_applied_again_and_a_node_that_lacks_it_is_told_to_reset() -> None:
    sync = SyncLog(me="a~1").added(url("gone~1", 1), 0.0).added(url("gone~1", 2), 0.0).added(url("a~1", 1), 0.0)
    pruned = sync.pruned(frozenset({"gone~1"}), frozenset(), 5 * DAY)
    assert dict(pruned.vector) == {"a~1": 1}
    assert [e.origin for e in pruned.entries] == ["a~1"]
    assert pruned.retired == {"gone~1": Retired(2, 5 * DAY)}
    assert pruned.has("gone~1", 2)
    assert pruned.added(url("gone~1", 2), 6 * DAY) == pruned
    assert pruned.covers({"gone~1": 2, "a~1": 1})
    assert pruned.known_to({"a~1": 1})
    assert sync.known_to({"a~1": 1}, frozenset({"gone~1"}))  # a peer that pruned it had all of it
    # A peer that has not pruned it yet: nothing to send, no gap. One that pruned it too: the same.
    assert (pruned.after({"gone~1": 2, "a~1": 1}).entries, pruned.after({"gone~1": 2, "a~1": 1}).gap) == ((), False)
    assert not pruned.after({"a~1": 1}, retired=frozenset({"gone~1"})).gap
    # A node that was not a member when it was pruned and lacks purge 2 (or all of it): told to reset.
    assert pruned.after({"gone~1": 1, "a~1": 1}).gap
    assert pruned.after({}, now=5 * DAY + HORIZON / 2 - 1).gap
    # Past half a horizon one that lacks it altogether is taken for a peer that pruned it a round before this node
    # and has forgotten it since: told to reset, it would purge every site.
    assert not pruned.after({}, now=5 * DAY + HORIZON / 2).gap
    assert pruned.after({"gone~1": 1}, now=5 * DAY + HORIZON).gap  # one that lacks a purge of it, still
    # A node that has not pruned it is not sent it again by one that still keeps it, once it says it pruned it.
    assert sync.after({"a~1": 1}, retired=frozenset({"gone~1"})).entries == ()
    assert [(e.origin, e.seq) for e in sync.after({"a~1": 1}).entries] == [("gone~1", 1), ("gone~1", 2)]
    # Two horizons after it was pruned the retired origin is forgotten.
    assert prunable(pruned, {}, 5 * DAY + 2 * HORIZON - 1).forget == set()
    assert prunable(pruned, {}, 5 * DAY + 2 * HORIZON).forget == {"gone~1"}
    assert pruned.pruned(frozenset(), frozenset({"gone~1"}), 8 * DAY).retired == {}


def test_pruning_is_kept_across_compaction_and_restart(tmp_path: Path) -> None:
    log = PurgeLog(tmp_path / "purges.log")
    table, sync = PurgeTable(), SyncLog(me="a~1")
    for seq in (1, 2):  # the first line written is a snapshot, the second a line of its own
        entry = url("gone~1", seq)
        sync = sync.added(entry, 3.0)
        log.append(entry_line(entry, 3.0), table, sync)
    assert read_log(log.path.read_bytes())[1].seen == {"gone~1": 3.0}
    sync = sync.pruned(frozenset({"gone~1"}), frozenset(), 9.0)
    log.append(prune_line(frozenset({"gone~1"}), frozenset(), 9.0), table, sync)
    assert PurgeLog(log.path).read_all() == (table, sync)  # replayed from the line
    log._rewrite(table, sync)
    assert PurgeLog(log.path).read_all() == (table, sync)  # and from a snapshot


def test_a_log_from_before_pruning_is_dated_when_read_and_read_whatever_its_size() -> None:
    vector = {f"pod-{k}~00": 1 for k in range(MAX_ORIGINS + 10)}
    doc = {"marks": [], "sync": {"me": "a~1", "vector": vector, "floor": vector, "entries": []}}
    sync = read_log(json.dumps(doc).encode())[1]
    assert len(sync.vector) == MAX_ORIGINS + 10  # not forgotten: a node past the bound must still prune
    assert sync.seen == {}
    assert sync.dated(7.0, {}).seen == dict.fromkeys(vector, 7.0)
    assert sync.dated(9.0, {"pod-1~00": 2.0}).seen["pod-1~00"] == 2.0  # read again: heard of when first read
    assert parse_vector(vector) is None  # a peer's is bounded


def test_a_node_told_to_reset_for_a_pruned_origin_is_told_once() -> None:
    # A new node (an empty vector), or one back from outside the membership, asks a node that pruned an origin.
    now = 5 * DAY
    pruned = SyncLog(me="a~1").added(url("gone~1", 1), 0.0).added(url("a~1", 1), 0.0)
    pruned = pruned.pruned(frozenset({"gone~1"}), frozenset(), now)
    answer = pruned.after({}, now=now)
    assert answer.gap
    # It resets (every site purged hard) and takes the answer's vector and retired origins as its own: asked
    # again, nothing is missing. Before, it took the vector only and was told to reset every round.
    back = SyncLog().adopted(answer.vector, now, answer.retired)
    assert back.retired == {"gone~1": Retired(1, now)}  # forgotten when the peer forgets it, not later
    assert not pruned.after(back.vector, retired=frozenset(back.retired), now=now + 1).gap
    assert back.has("gone~1", 1)
    assert back.covers(pruned.vector)
    # And the log says so.
    line = adopt_line(answer.vector, now, answer.retired)
    assert read_log(b"[]\n" + line)[1].retired == back.retired
