"""Node ids: one spelling per address, and the StatefulSet name a PTR record gives a member."""

from __future__ import annotations

from edgecache.core.nodeid import canonical, host_label, is_address, member_name, named_members

SERVICE = "edgecache-peers.default.svc.cluster.local"


def test_an_address_id_has_one_spelling() -> None:
    # What `${POD_IP}:8080` gives for an IPv6 pod, and what DNS answers give for the same address.
    for spelling in (
        "fd00::1:8080",
        "[fd00::1]:8080",
        "[fd00:0:0::1]:8080",
        "fd00:0:0:0:0:0:0:1:8080",
        "[FD00::1]:8080",
    ):
        assert canonical(spelling) == "[fd00::1]:8080", spelling
    assert canonical("[::ffff:10.0.0.1]:8080") == "10.0.0.1:8080"  # a dual-stack socket's IPv4 peer
    assert canonical("::ffff:10.0.0.1:8080") == "10.0.0.1:8080"
    assert canonical("10.0.0.1:08080") == "10.0.0.1:8080"
    assert canonical("10.0.0.1:8080") == "10.0.0.1:8080"


def test_other_ids_are_kept_as_written() -> None:
    for other in ("node1", "edgecache-0", "Node-1", "host.example:8080", "10.0.0.1", "10.0.0.1:0", "::1", "[x]:80"):
        assert canonical(other) == other, other
        assert not is_address(other), other
    assert is_address("10.0.0.1:8080")
    assert is_address("fd00::1:8080")


def test_a_member_is_named_by_its_ptr_record_under_the_service() -> None:
    ptr = f"edgecache-1.{SERVICE}."
    assert member_name(ptr, SERVICE) == "edgecache-1"
    assert member_name(ptr, "edgecache-peers") == "edgecache-1"  # cluster.dns given as the short name
    assert member_name(ptr.upper(), SERVICE + ".") == "edgecache-1"
    assert member_name("edgecache-1.other.default.svc.cluster.local.", SERVICE) is None  # another service's
    assert member_name("10-0-0-7.default.pod.cluster.local.", SERVICE) is None
    assert member_name(SERVICE, SERVICE) is None
    assert member_name("", SERVICE) is None
    assert member_name(f".{SERVICE}", SERVICE) is None


def test_named_members_one_per_name_and_none_unnamed() -> None:
    pairs = [
        ("[fd00::2]:8080", "edgecache-1"),  # a dual-stack pod: both its addresses have its name
        ("10.0.0.2:8080", "edgecache-1"),
        ("10.0.0.1:8080", "edgecache-0"),
        ("10.0.0.9:8080", None),  # no name (yet): left out rather than renamed later
    ]
    expected = {"edgecache-0": "10.0.0.1:8080", "edgecache-1": "10.0.0.2:8080"}
    assert named_members(pairs) == expected
    assert named_members(reversed(pairs)) == expected  # every node picks the same, whatever DNS's order


def test_the_host_name_gives_the_pods_name() -> None:
    assert host_label("edgecache-0") == "edgecache-0"
    assert host_label("edgecache-0.edgecache-peers.default.svc.cluster.local") == "edgecache-0"
    assert host_label("Edge-2.example") == "edge-2"
