"""The purge table drops only marks that can no longer matter, and its log replays to the same table.

Reference semantics, from the list of purges alone: an object stored at t1 is reachable at t2 unless a hard
purge of a scope that covers it came between; it is stale if a soft purge that covers it came after t1. The
compacted table, and the table read back from its log, must answer exactly that for every object.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.purge import Mark, PurgeTable, Scope, TableFull
from edgecache.storage.purgelog import COMPACT_SLACK, PurgeLog

SCOPES: list[Scope] = [
    ("s", "", ""),
    ("s", "h", "/"),
    ("s", "h", "/a/"),
    ("s", "h", "/a/b/"),
    ("s", "h", "/c/"),
    ("s", "g", "/a/"),
    ("t", "", ""),
]
OBJECTS = [("s", "h", "/a/b/x"), ("s", "h", "/a/x"), ("s", "h", "/c/x"), ("s", "g", "/a/x"), ("t", "h", "/a/x")]


def under(scope: Scope, obj: tuple[str, str, str]) -> bool:
    """The reference's own reading of a scope: a whole site, or a directory of one host."""
    site, host, directory = scope
    return obj[0] == site and (host == "" or (obj[1] == host and obj[2].startswith(directory)))


events = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.sampled_from(OBJECTS)),
        st.tuples(st.sampled_from(["hard", "soft"]), st.sampled_from(SCOPES)),
    ),
    max_size=60,
)


@given(events, st.integers(min_value=0, max_value=60))
def test_compaction_never_changes_what_is_reachable_or_stale(
    steps: list[tuple[str, tuple[str, str, str]]], snapshot_at: int
) -> None:
    gens = (f"g{i}" for i in itertools.count())
    table = PurgeTable()
    purges: list[tuple[float, str, Scope]] = []  # (time, kind, scope): the reference
    stored: list[tuple[tuple[str, str, str], str, float]] = []  # (object, key suffix, time)
    log = b""
    for t, (kind, target) in enumerate(steps, start=1):
        if t == snapshot_at + 1 or not log:
            log = table.to_bytes()
        if kind == "store":
            stored.append((target, table.lookup(*target)[0], float(t)))
        else:
            generation, soft_at = (next(gens), None) if kind == "hard" else (None, float(t))
            table = table.purged(target, generation, soft_at, limit=None)
            log += b"\n" + PurgeTable.op(target, generation, soft_at).rstrip(b"\n")
            purges.append((float(t), kind, target))
        for obj, suffix, when in stored:
            later = [(k, s) for (at, k, s) in purges if at > when and under(s, obj)]
            suffix_now, soft_before = table.lookup(*obj)
            assert (suffix_now == suffix) == all(k == "soft" for k, _ in later), (obj, when, purges, table)
            if suffix_now == suffix:
                assert (when < soft_before) == any(k == "soft" for k, _ in later), (obj, when, purges, table)
    assert PurgeTable.from_log(log) == table


def test_purges_of_one_scope_keep_one_mark() -> None:
    table = PurgeTable()
    for i in range(1000):
        table = table.purged(("s", "h", "/a/"), f"g{i}" if i % 2 else None, None if i % 2 else float(i))
    assert table.marks == {("s", "h", "/a/"): table.marks[("s", "h", "/a/")]}
    assert table.marks[("s", "h", "/a/")].generation == "g999"


def test_a_broader_purge_takes_the_place_of_those_under_it() -> None:
    table = PurgeTable()
    for i in range(400):
        table = table.purged(("s", "h", f"/d{i}/"), f"g{i}", None)
    table = table.purged(("s", "h", "/x/"), None, 5.0)
    table = table.purged(("t", "h", "/d1/"), "other-site", None)
    assert len(table.marks) == 402
    table = table.purged(("s", "", ""), "all", None)
    assert set(table.marks) == {("s", "", ""), ("t", "h", "/d1/")}


def test_a_new_scope_past_the_limit_is_refused_and_a_broader_one_is_not() -> None:
    table = PurgeTable()
    for i in range(3):
        table = table.purged(("s", "h", f"/d{i}/"), f"g{i}", None, limit=3)
    with pytest.raises(TableFull, match=r"holds 3 directories of site 's' \(at most 3 a site\)"):
        table.purged(("s", "h", "/d3/"), "g3", None, limit=3)
    assert table.purged(("s", "h", "/d0/"), "again", None, limit=3).marks.keys() == table.marks.keys()
    assert set(table.purged(("s", "h", "/"), "root", None, limit=3).marks) == {("s", "h", "/")}


def test_the_log_stays_within_its_bound_and_reads_back(tmp_path: Path) -> None:
    log = PurgeLog(tmp_path / "purges.log")
    assert log.read() is None
    table = PurgeTable()
    for i in range(2000):
        scope = ("s", "h", f"/d{i % 10}/")
        generation, soft_at = (f"g{i}", None) if i % 3 else (None, float(i))
        table = table.purged(scope, generation, soft_at)
        log.append(PurgeTable.op(scope, generation, soft_at), table)
        lines = log.path.read_bytes().count(b"\n")
        assert lines <= 1 + len(table.marks) + COMPACT_SLACK, (i, lines)
    assert len(table.marks) == 10
    assert PurgeLog(log.path).read() == table
    with log.path.open("ab") as f:
        f.write(b'{"purge": ["s", "h", "/d1/"], "gener')  # torn by a crash mid-write
    again = PurgeLog(log.path)
    assert again.read() == table
    table = table.purged(("s", "h", "/d2/"), "after-the-crash", None)
    again.append(PurgeTable.op(("s", "h", "/d2/"), "after-the-crash", None), table)
    assert PurgeLog(log.path).read() == table


def ten_sites_of_three() -> PurgeTable:
    """Three directory marks for each of ten sites, at a share of 3 a site: the table at its ceiling of all sites."""
    table = PurgeTable()
    for site in range(10):
        for i in range(3):
            table = table.purged((f"s{site}", "h", f"/d{i}/"), f"g{i}", None, limit=3)
    return table


def test_every_site_has_its_share_and_all_sites_together_a_ceiling() -> None:
    """A share a site (a provider's purges never crowd out another's), and a ceiling of ten shares for the node:
    every worker holds the table, and a share a site alone would let a node of many sites hold millions."""
    table = ten_sites_of_three()
    with pytest.raises(TableFull, match="of site 's0'"):
        table.purged(("s0", "h", "/d3/"), "g3", None, limit=3)
    with pytest.raises(TableFull, match="of all sites"):
        table.purged(("s10", "h", "/d0/"), "g0", None, limit=3)
    # A whole site's purge takes the place of its directories: room again, for any site.
    table = table.purged(("s0", "", ""), "all", None, limit=3)
    assert len(table.marks) == 28
    assert len(table.purged(("s10", "h", "/d0/"), "g0", None, limit=3).marks) == 29


def test_a_whole_site_is_purged_whatever_the_other_sites_hold() -> None:
    """Ten sites' directories (one provider's ten sites, or ten providers) filled the ceiling, and then another
    provider's purge of its own whole site was refused too: the one purge the error's advice names, and the one a
    takedown needs. It adds one mark a site at most, and a soft one as a hard one."""
    table = ten_sites_of_three()
    with pytest.raises(TableFull, match="of all sites"):
        table.purged(("s10", "h", "/d0/"), "g0", None, limit=3)
    hard = table.purged(("s10", "", ""), "all", None, limit=3)
    soft = table.purged(("s11", "", ""), None, 1.0, limit=3)
    assert (len(hard.marks), hard.marks[("s10", "", "")]) == (31, Mark("all", 0.0))
    assert (len(soft.marks), soft.marks[("s11", "", "")]) == (31, Mark("", 1.0))
