"""What a node keeps of its peers' purges to judge forwards (cluster.behind): a peer lacks a purge until its answer or
a confirmation shows it, and every table is bounded."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from edgecache.cluster.behind import MAX_COUNTED, Behind
from edgecache.config import Site
from edgecache.core.purge import HORIZON, MAX_ENTRIES, Entry, SyncLog
from edgecache.core.purgeprune import Heard
from tests.samples import sample_value

SITES = (Site(name="videos", hosts=("video.test",), origins=("http://127.0.0.1:9",)),)


def behind(*entries: Entry, applying: tuple[Entry, ...] = ()) -> Behind:
    """`applying`: purges taken here whose entries are not in the purge log yet (Purging.applying)."""
    sync = SyncLog()
    for e in entries:
        sync = sync.added(e)
    store: Any = SimpleNamespace(sync=sync, horizon=HORIZON, applying=lambda: applying)
    return Behind(store, lambda: SITES)


def lacks(b: Behind, peer: str, path: str) -> str | None:
    return b.lacks(peer, "videos", "video.test", path, f"videos|video.test|{path}")


def counted(peer: str) -> float:
    return sample_value("edgecache_peer_purge_behind_total", {"peer": peer, "kind": "prefix"}) or 0.0


def test_a_peer_lacks_a_purge_until_its_answer_or_a_confirmation_shows_it() -> None:
    b = behind(Entry("a~1", 1, "prefix", "videos", "video.test", "/d/"))
    assert (lacks(b, "p", "/d/x"), lacks(b, "p", "/e/x")) == ("prefix", None)  # never heard from: it has none
    b.heard("p", Heard({"a~1": 1}))
    assert lacks(b, "p", "/d/x") is None
    b.applied("q", "a~1", 1)  # it confirmed this node's pass-on
    assert lacks(b, "q", "/d/x") is None
    b.heard("q", Heard({}))  # an answer from before it applied it does not undo what it confirmed
    assert lacks(b, "q", "/d/x") is None


def test_a_purge_being_applied_here_counts_before_it_is_in_the_purge_log() -> None:
    """A URL purge changes the object's record before its entry is logged: a peer that has not applied it lacks it
    from the start, or a hot copy filled meanwhile keeps the peer's bytes as made after the purge."""
    url = Entry("a~1", 2, "url", "videos", "video.test", "/d/x")
    b = behind(Entry("a~1", 1, "prefix", "videos", "video.test", "/e/"), applying=(url,))
    b.heard("p", Heard({"a~1": 1}))
    assert (lacks(b, "p", "/d/x"), lacks(b, "p", "/d/y"), lacks(b, "p", "/e/x")) == ("url", None, None)
    b.applied("q", "a~1", 2)  # it confirmed this node's pass-on
    assert lacks(b, "q", "/d/x") is None
    b.heard("r", Heard({"a~1": 2}))
    assert lacks(b, "r", "/d/x") is None


def test_the_counted_objects_and_the_confirmed_purges_of_a_peer_are_bounded() -> None:
    b = behind(Entry("a~1", 1, "prefix", "videos", "video.test", "/d/"))
    before = counted("p-bound")
    for i in range(MAX_COUNTED + 10):
        assert lacks(b, "p-bound", f"/d/{i}") == "prefix"
    assert lacks(b, "p-bound", "/d/0") == "prefix"  # counted once already
    assert len(b._counted["p-bound"]) == MAX_COUNTED
    assert counted("p-bound") == before + MAX_COUNTED + 10  # past the bound, each request counts
    for seq in range(MAX_ENTRIES + 10):
        b.applied("p-bound", "b~1", seq + 1)
    assert len(b._applied["p-bound"]) == MAX_ENTRIES
    b.heard("p-bound", Heard({"b~1": MAX_ENTRIES}))  # its answer shows them: no longer kept, and counting anew
    assert (len(b._applied["p-bound"]), "p-bound" in b._counted) == (0, False)
    b.keep_only({"other"})
    assert (b.last, b._applied, b._counted, b._judged) == ({}, {}, {}, {})


def test_a_peer_that_may_lack_purges_no_longer_kept_here_counts_as_lacking_one_for_every_object() -> None:
    b = behind(*(Entry("a~1", seq, "url", "videos", "video.test", f"/{seq}") for seq in range(1, MAX_ENTRIES + 2)))
    assert lacks(b, "p", "/anything") == "all"  # never heard from: it may lack purge 1, which is no longer kept
    b.heard("p", Heard({"a~1": 1}))
    assert (lacks(b, "p", "/anything"), lacks(b, "p", "/2")) == (None, "url")
