"""ClusterView.outsiders: the nodes that are no members here but ask this node's purge log (one just added whose
peers' files do not name it yet, one retired that DNS still sends viewers to) are passed the purges this node
takes; bounded in number and in time, and never a member or this node itself."""

from __future__ import annotations

import pytest

from edgecache.cluster import view as view_module
from edgecache.cluster.view import ASKED_WITHIN, MAX_ASKERS, ClusterView
from edgecache.config import ClusterSettings
from edgecache.core.ring import Member

KEY = b"k" * 32
MEMBERS = (Member("node0", "127.0.0.1:1", admin="127.0.0.1:2"), Member("node1", "127.0.0.1:3", admin="127.0.0.1:4"))


def test_a_node_that_asks_and_is_no_member_is_an_outsider_until_it_stops_asking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(view_module.time, "monotonic", lambda: now[0])
    view = ClusterView(ClusterSettings(self_id="node0", key=KEY, nodes=MEMBERS))
    view.asked("node1", "127.0.0.1:4")  # a member: heard from, not an outsider
    view.asked("node0", "127.0.0.1:2")  # itself
    view.asked("node2", None)  # gave no admin address: nowhere to tell it
    view.asked("node3", "127.0.0.1:6")
    assert view.outsiders() == [Member("node3", "", admin="127.0.0.1:6")]
    now[0] += ASKED_WITHIN
    assert [m.id for m in view.outsiders()] == ["node3"]
    now[0] += 0.5
    assert view.outsiders() == []  # it stopped asking
    view.asked("node3", "127.0.0.1:6")
    view.forget("node3")  # a purge passed on to it failed
    assert view.outsiders() == []
    view.asked("node3", "127.0.0.1:6")
    view.set_members([*MEMBERS, Member("node3", "127.0.0.1:5", admin="127.0.0.1:6")])
    assert view.outsiders() == []  # a member now: told as one


def test_outsiders_are_bounded_and_the_longest_silent_is_dropped() -> None:
    view = ClusterView(ClusterSettings(self_id="node0", key=KEY, nodes=MEMBERS))
    for n in range(MAX_ASKERS + 36):
        view.asked(f"other{n}", f"127.0.0.1:{10_000 + n}")
    assert [m.id for m in view.outsiders()] == [f"other{n}" for n in range(36, MAX_ASKERS + 36)]
    view.asked("other36", "127.0.0.1:10036")  # asked again: kept before one that has not since
    view.asked("late", "127.0.0.1:9999")
    found = [m.id for m in view.outsiders()]
    assert found == [*(f"other{n}" for n in range(38, MAX_ASKERS + 36)), "other36", "late"]


def test_an_outsider_asking_once_a_long_interval_is_not_forgotten_between_its_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(view_module.time, "monotonic", lambda: now[0])
    view = ClusterView(ClusterSettings(self_id="node0", key=KEY, nodes=MEMBERS, interval=40.0))
    view.asked("node3", "127.0.0.1:6")
    now[0] += 2 * 40.0  # a round missed: still told
    assert [m.id for m in view.outsiders()] == ["node3"]
    now[0] += 40.0 + 0.5  # three rounds without an ask
    assert view.outsiders() == []
