"""The cluster's side of purges, without a network: identities, what a peer lacks, the bounds, and the log that
keeps them across a restart."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.purge import (
    BATCH,
    MAX_ENTRIES,
    Entry,
    PurgeTable,
    SyncLog,
    entry_line,
    parse_vector,
    peer_token,
    read_log,
)
from edgecache.storage.purgelog import COMPACT_SLACK, PurgeLog


def url(origin: str, seq: int, path: str = "/a") -> Entry:
    return Entry(origin, seq, "url", "videos", "video.test", path)


def test_each_purge_is_applied_once_in_whatever_order_it_arrives() -> None:
    sync = SyncLog()
    for seq in (2, 3, 1, 5):
        assert not sync.has("a~1", seq)
        sync = sync.added(url("a~1", seq))
        assert sync.has("a~1", seq)
    assert dict(sync.vector) == {"a~1": 3}  # 4 has not arrived: 5 is applied, beyond the vector
    assert sync.above == {"a~1": frozenset({5})}
    assert not sync.has("a~1", 4)
    sync = sync.added(url("a~1", 4))
    assert (dict(sync.vector), dict(sync.above)) == ({"a~1": 5}, {})


def test_a_peers_vector_is_known_to_hold_this_nodes_purges_only_when_it_has_every_one() -> None:
    sync = SyncLog()
    assert sync.known_to({})  # nothing applied here: any peer holds no less
    for seq in (1, 2, 4):
        sync = sync.added(url("a~1", seq))
    sync = sync.added(url("b~1", 1))
    assert not sync.known_to({})
    assert not sync.known_to({"a~1": 2, "b~1": 1})  # 4 was applied here, out of order
    assert not sync.known_to({"a~1": 4})
    assert sync.known_to({"a~1": 4, "b~1": 1, "c~1": 9})


def test_a_peer_gets_what_it_lacks_oldest_first_in_bounded_batches() -> None:
    sync = SyncLog()
    for seq in range(1, BATCH + 11):
        sync = sync.added(url("a~1", seq))
    sync = sync.added(url("b~2", 1))
    answer = sync.after({"a~1": 5})
    assert [(e.origin, e.seq) for e in answer.entries] == [("a~1", s) for s in range(6, BATCH + 6)]
    assert (answer.more, answer.gap, dict(answer.vector)) == (True, False, {"a~1": BATCH + 10, "b~2": 1})
    rest = sync.after({"a~1": BATCH + 5})
    tail = [("a~1", s) for s in range(BATCH + 6, BATCH + 11)]
    assert [(e.origin, e.seq) for e in rest.entries] == [*tail, ("b~2", 1)]
    assert not rest.more
    assert sync.after(sync.vector).entries == ()
    assert sync.covers({"a~1": BATCH + 10})
    assert not sync.covers({"a~1": 1, "c~3": 1})


def test_the_entries_kept_are_bounded_and_a_peer_further_behind_is_told_to_reset() -> None:
    sync = SyncLog()
    for seq in range(1, MAX_ENTRIES + 6):
        sync = sync.added(url("a~1", seq))
    assert len(sync.entries) == MAX_ENTRIES
    assert (sync.entries[0].seq, dict(sync.floor)) == (6, {"a~1": 5})
    assert sync.after({"a~1": 4}).gap  # it lacks purge 5, which is no longer kept
    assert not sync.after({"a~1": 5}).gap
    reset = SyncLog().added(url("a~1", 2)).adopted(sync.vector)
    assert reset.covers(sync.vector)
    assert dict(reset.floor) == {"a~1": MAX_ENTRIES + 5}  # and it cannot pass on what it never had
    assert not reset.has("a~1", MAX_ENTRIES + 6)


def test_a_doubting_table_makes_every_copy_stored_before_stale() -> None:
    table = PurgeTable()
    assert table.lookup("videos", "video.test", "/a") == ("", 0.0)
    doubting = PurgeTable(unsure_before=100.0)
    assert doubting.lookup("videos", "video.test", "/a") == ("", 100.0)
    purged = doubting.purged(("videos", "video.test", "/d/"), None, 50.0)
    assert purged.lookup("videos", "video.test", "/d/x") == ("", 100.0)  # the later of the two
    assert purged.purged(("videos", "", ""), None, 200.0).lookup("videos", "video.test", "/d/x") == ("", 200.0)


@given(st.lists(st.one_of(st.none(), st.integers(), st.text(), st.booleans()), max_size=8))
def test_entries_from_a_peer_never_raise(row: list[object]) -> None:
    entry = Entry.from_json(row)
    assert entry is None or entry.seq >= 1


def test_malformed_entries_and_vectors_are_refused() -> None:
    good = url("a~1", 1).to_json()
    assert Entry.from_json(good) == url("a~1", 1)
    for bad in (
        [*good[:1], 0, *good[2:]],  # numbers start at 1
        [*good[:1], True, *good[2:]],  # a bool is no number
        [*good[:2], "everything", *good[3:]],
        [*good[:5], "x" * 9000, good[6]],
        good[:6],
        "a",
    ):
        assert Entry.from_json(bad) is None
    assert parse_vector({"a~1": 3}) == {"a~1": 3}
    for bad_vector in ({"a~1": -1}, {"a~1": "3"}, [1], {"a~1": 1.5}, None):
        assert parse_vector(bad_vector) is None


def test_the_log_keeps_identities_across_compaction_and_restart(tmp_path: Path) -> None:
    log = PurgeLog(tmp_path / "purges.log")
    assert log.read_all() is None
    table, sync = PurgeTable(), SyncLog(me="n1~ab")
    for seq in range(1, 3 * COMPACT_SLACK):
        entry = url("n1~ab", seq, f"/p{seq}")
        if seq % 3:
            sync = sync.added(entry)
            log.append(entry_line(entry), table, sync)
        else:
            table = table.purged(("videos", "video.test", f"/d{seq}/"), f"g{seq}", None)
            sync = sync.added(entry)
            log.append(PurgeTable.op(("videos", "video.test", f"/d{seq}/"), f"g{seq}", None, entry), table, sync)
        assert PurgeLog(log.path).read_all() == (table, sync)
    lines = log.path.read_bytes().count(b"\n")
    assert lines <= 1 + len(table.marks) + len(sync.entries) + COMPACT_SLACK
    assert read_log(log.path.read_bytes())[1].me == "n1~ab"
    # A torn last line (a crash mid-write) is skipped; the purges before it are all there.
    log.path.write_bytes(log.path.read_bytes() + b'{"entry": ["n1~ab", 999')
    assert PurgeLog(log.path).read_all() == (table, sync)


def test_a_log_written_before_purges_had_identities_still_reads() -> None:
    table = PurgeTable().purged(("videos", "", ""), "g1", None)
    data = table.to_bytes() + b"\n" + PurgeTable.op(("videos", "video.test", "/d/"), "g2", None)
    got, sync = read_log(data)
    assert got == table.purged(("videos", "video.test", "/d/"), "g2", None)
    assert sync == SyncLog()


def test_the_peer_token_is_derived_from_the_key_and_is_not_it() -> None:
    key = b"0123456789abcdef" * 4
    assert peer_token(key) == peer_token(key)
    assert peer_token(key) != peer_token(key[::-1])
    assert key.decode() not in peer_token(key)
