"""ClusterView.failing (which round a peer's last probe failed in, read after a pause: cluster.purgesync) holds only
the members of the ring: a member DNS no longer lists (a pod gone, its address never to come back) leaves it."""

from __future__ import annotations

from edgecache.cluster.view import ClusterView
from edgecache.config import ClusterSettings
from edgecache.core.ring import Member

KEY = b"k" * 32


def test_a_member_that_leaves_the_ring_leaves_the_failing_table() -> None:
    members = [Member(f"10.0.0.{n}:8080", f"10.0.0.{n}:8080") for n in range(1, 4)]
    view = ClusterView(ClusterSettings(self_id=members[0].id, key=KEY, nodes=tuple(members)))
    for m in members[1:]:
        view.record(m.id, False)
    view.checked()
    view.failed(members[2].id, "forward: refused")
    assert view.failing == {members[1].id: 0, members[2].id: 1}
    for n in range(4, 104):  # each round of DNS, one pod gone and one new, at a new address
        gone = members.pop(1)
        members.append(Member(f"10.0.0.{n}:8080", f"10.0.0.{n}:8080"))
        view.record(members[-1].id, False)  # not a member yet: nothing recorded
        view.set_members(members)
        view.record(members[-1].id, False)
        assert gone.id not in view.failing
    assert set(view.failing) <= {m.id for m in members}
    assert len(view.failing) == 2
